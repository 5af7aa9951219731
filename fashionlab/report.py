"""A study report: one self-contained HTML file for a set of runs, to read, print or hand in.

    fashionlab report runs/A runs/B -o report.html

Every figure is an inline base64 PNG and the style sheet is inline, so the file opens offline
and needs nothing beside it. Sections: data, comparison (intervals and McNemar tests), then
for each run its command, model summary, curves, test confusion, per-class scores and the
mistakes it was most sure of.
"""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path

import numpy as np

from fashionlab import __version__, compare, data, metrics, plots, runs
from fashionlab.errors import UserError

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a;
       max-width: 1080px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 40px 0 8px; padding-top: 12px; border-top: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 24px 0 6px; color: #33404d; }
.meta, .note { color: #57606a; font-size: 13px; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 16px;
      margin: 16px 0; font-size: 14px; }
nav ol { margin: 4px 0; padding-left: 20px; columns: 2; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #f6f8fa; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.best td { font-weight: 600; background: #eef7ee; }
.sig { color: #1a7f37; font-weight: 600; }
.ns { color: #57606a; }
code, pre { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
code.cmd { display: block; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
           padding: 6px 10px; white-space: pre-wrap; word-break: break-all; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px;
      overflow-x: auto; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav { display: none; }
  section.run { break-before: page; }
  figure, table, pre { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


def _img(fig, alt: str, caption: str = "") -> str:
    b64 = base64.b64encode(plots.png_bytes(fig, dpi=100)).decode()
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'
            f"{cap}</figure>")


def _table(head: list[str], rows: list[list[str]], left: int = 1,
           classes: list[str] | None = None) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{v}</{tag}>'
                       for i, v in enumerate(row))

    body = "".join(f'<tr class="{(classes or [""] * len(rows))[k]}">{cells("td", r)}</tr>'
                   for k, r in enumerate(rows))
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _data_section(ds: data.DataSet | None, note: str, source: str) -> str:
    if ds is None:
        return f'<p class="note">{html.escape(note)}</p>'
    counts = [np.bincount(y, minlength=len(ds.classes)) for y in (ds.train_y, ds.test_y)]
    facts = _table(["", ""], [
        ["source", html.escape(f"{source or ds.source} ({ds.path})")],
        ["checksums", "verified against the official files" if ds.verified
         else "not verified (not the official files, or a custom data set)"],
        ["images", f"{len(ds.train_y):,} training, {len(ds.test_y):,} test, "
                   f"{ds.train_x.shape[1]}x{ds.train_x.shape[2]} grey-scale"]], left=2)
    per_class = _table(["class", "training images", "test images"],
                       [[html.escape(c), f"{a:,}", f"{b:,}"]
                        for c, a, b in zip(ds.classes, *counts, strict=True)])
    grid = _img(plots.samples_figure(ds.train_x, ds.train_y, ds.classes),
                "sample training images, one row per class")
    return facts + per_class + grid


def _datasets(entries: list[compare.Entry], data_dir: str | Path | None
              ) -> tuple[list[tuple], dict[tuple, tuple]]:
    """Each run's own data set, loaded once per folder: a report may compare runs trained on
    different data, and each run's figures and class names must come from its own."""
    keys, loaded = [], {}
    for e in entries:
        info, config = e.run.info, e.run.config
        key = (str(data_dir or info.get("data", {}).get("path", "")),
               config.get("data", {}).get("dataset", "fashion-mnist"),
               tuple(config.get("data", {}).get("classes", ())))  # each run's own names
        if key not in loaded:
            try:
                loaded[key] = data.of_run(info, config, data_dir), ""
            except UserError as err:
                loaded[key] = None, f"Data not loadable ({err}); image figures are left out."
        keys.append(key)
    return keys, loaded


def _data_sections(entries: list[compare.Entry], keys: list, loaded: dict) -> str:
    out = []
    for key, (ds, note) in loaded.items():
        users = [i for i, k in enumerate(keys, 1) if k == key]
        source = entries[users[0] - 1].run.info.get("data", {}).get("source", "")
        if len(loaded) > 1:
            out.append(f"<h3>Data of run{'s' * (len(users) > 1)} "
                       f"{', '.join(f'#{i}' for i in users)}</h3>")
        out.append(_data_section(ds, note, source))
    return "".join(out)


def _comparison_section(c: compare.Comparison) -> str:
    accs = [e.accuracy for e in c.entries]
    best = int(np.nanargmax(accs)) if not all(math.isnan(a) for a in accs) else -1
    rows = []
    for i, e in enumerate(c.entries, 1):
        low, high = e.interval
        ci = f"[{low:.4f}, {high:.4f}]" if not math.isnan(low) else "-"
        rows.append([f"#{i}", html.escape(e.model), f'<a href="#run{i}">{html.escape(e.run.name)}'
                     "</a>", f"{e.params:,}", str(e.epochs), compare.duration(e.seconds),
                     f"{e.accuracy:.4f}", ci])
    out = _table(["#", "model", "run folder", "params", "epochs", "train time",
                  "test accuracy", "95% interval (Wilson)"], rows, left=3,
                 classes=["best" if k == best else "" for k in range(len(rows))])
    if c.pairs:
        prow = []
        for i, j, t in c.pairs:
            a, b = c.entries[i], c.entries[j]
            verdict = ('<span class="sig">differ</span>' if t.p_value < 0.05
                       else '<span class="ns">no significant difference</span>')
            prow.append([f"#{i + 1} {html.escape(a.model)} vs #{j + 1} {html.escape(b.model)}",
                         f"{a.accuracy - b.accuracy:+.4f}", f"{t.only_a:,}", f"{t.only_b:,}",
                         html.escape(t.p_text), verdict])
        out += "<h3>Is the difference real? Exact McNemar tests</h3>"
        out += _table(["pair", "accuracy difference", "only first right",
                       "only second right", "p-value", "at 5%"], prow)
        out += ('<p class="note">Both models saw the same test images; the test asks whether '
                "the images only one of them gets right split more unevenly than coin flips "
                "would. p &lt; 0.05 marks a real difference")
        out += (f"; with {len(c.pairs)} tests, p &lt; {0.05 / len(c.pairs):.2g} keeps the "
                "family-wise error at 5% (Bonferroni).</p>" if len(c.pairs) > 1 else ".</p>")
    if c.unpaired:
        pairs = ", ".join(f"#{i + 1} vs #{j + 1}" for i, j in c.unpaired)
        out += (f'<p class="note">Not tested: {pairs} (scored on different test images, or a '
                "run without saved predictions).</p>")
    for model, members, mean, std in c.groups:
        out += (f"<p><b>{html.escape(model)}</b> over {len(members)} seeds: test accuracy "
                f"{mean:.4f} ± {std:.4f} (mean ± sample std).</p>")
    histories = [(f"#{i} {e.model}", e.run.history)
                 for i, e in enumerate(c.entries, 1) if e.run.history]
    if len(histories) > 1:
        out += _img(plots.overlay_figure(histories), "curves of all runs",
                    "Validation accuracy and loss of every run with epochs.")
    return out


def _model_text(run: runs.Run) -> str:
    baseline = run.info.get("baseline")
    if baseline:
        return (f"<p>scikit-learn {html.escape(baseline.get('description', ''))}, fitted on "
                f"{baseline.get('train_size', 0):,} training images (flattened pixels / 255)."
                "</p>")
    from fashionlab import models

    try:
        summary = models.summary(models.build(run.config["model"]["layers"]))
    except (UserError, KeyError) as e:
        summary = f"(cannot rebuild the model: {e})"
    return f"<pre>{html.escape(summary)}</pre>"


def _run_section(i: int, e: compare.Entry, ds: data.DataSet | None) -> str:
    run = e.run
    info = run.info
    facts = [f"engine {info.get('engine', 'torch')}", f"seed {e.seed}",
             f"code {info.get('code_version', '?')}", f"{info.get('cpu', '')}",
             f"finished {info.get('ended', '?')}"]
    out = [f'<section class="run" id="run{i}"><h2>{i + 2}. #{i} {html.escape(e.model)}</h2>',
           f'<p class="meta">{html.escape(str(run.path))}<br>'
           f"{html.escape(' · '.join(f for f in facts if f))}</p>",
           "<h3>Command</h3>", f'<code class="cmd">{html.escape(info.get("command", "?"))}</code>',
           "<h3>Model</h3>", _model_text(run)]
    if run.history:
        best = run.metrics.get("best_epoch") or plots.best_epoch(run.history)
        onset = plots.overfitting_onset(run.history)
        monitor = run.config.get("train", {}).get("monitor", "val_accuracy")
        caption = (f"Best epoch by {monitor.replace('val_', 'validation ')}: {best}. "
                   if best else "")
        if onset:
            caption += (f"Overfitting from epoch {onset}: validation loss rises from there "
                        "while training loss keeps falling.")
        elif plots.has_validation(run.history):
            caption += ("No sign of overfitting by the rule (2+ epochs after the validation "
                        "loss minimum, the last with higher validation loss and lower training "
                        "loss).")
        else:
            caption += "No validation split: nothing to judge overfitting by."
        out += ["<h3>Training curves</h3>",
                _img(plots.curves_figure(run.history, e.model, best), "training curves",
                     caption)]
    probs, labels = run.predictions()
    predicted = probs.argmax(1)
    classes = ds.classes if ds is not None else tuple(str(k) for k in range(probs.shape[1]))
    cm = metrics.confusion_matrix(labels, predicted, len(classes))
    out += ["<h3>Test confusion matrix</h3>",
            _img(plots.confusion_figure(cm, classes, e.model), "test confusion matrix",
                 "Rows: true class; columns: predicted class. Right: share of each true class.")]
    s = metrics.precision_recall_f1(labels, predicted, len(classes))
    rows = [[html.escape(c), f"{s['precision'][k]:.3f}",
             *([f"{s['recall'][k]:.3f}", f"{s['f1'][k]:.3f}"] if s["support"][k] else ["-", "-"]),
             f"{s['support'][k]:,}"] for k, c in enumerate(classes)]
    pairs = ", ".join(f"{html.escape(classes[a])} / {html.escape(classes[b])} ({ab} + {ba})"
                      for a, b, ab, ba in metrics.most_confused(cm, 4))
    out += ["<h3>Per-class metrics (test set)</h3>",
            _table(["class", "precision", "recall", "F1", "images"], rows),
            f"<p>Most confused pairs (errors each way): {pairs or 'none'}.</p>"]
    if ds is not None and np.array_equal(ds.test_y, labels):
        fig = plots.mistakes_figure(ds.test_x, labels, probs, classes, k=18)
        if fig is not None:
            out += ["<h3>Most confident mistakes</h3>", _img(fig, "most confident mistakes")]
    return "\n".join(out) + "</section>"


def build(items: list[runs.Run | str | Path], title: str = "Fashion-MNIST study",
          data_dir: str | Path | None = None) -> str:
    """The report's HTML text for finished runs (loads the data once for images)."""
    if not items:
        raise UserError("name at least one run folder")
    c = compare.compare(items)
    keys, loaded = _datasets(c.entries, data_dir)
    toc = "".join(f'<li><a href="#run{i}">#{i} {html.escape(e.model)}</a></li>'
                  for i, e in enumerate(c.entries, 1))
    body = "\n".join(_run_section(i, e, loaded[k][0])
                     for i, (e, k) in enumerate(zip(c.entries, keys, strict=True), 1))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{len(c.entries)} runs · generated {stamp} by fashionlab {__version__}</p>
<nav><b>Contents</b><ol><li><a href="#data">Data</a></li>
<li><a href="#comparison">Comparison</a></li>{toc}</ol></nav>
<section id="data"><h2>1. Data</h2>{_data_sections(c.entries, keys, loaded)}</section>
<section id="comparison"><h2>2. Comparison</h2>{_comparison_section(c)}</section>
{body}
<p class="note">Intervals: Wilson score, 95%. McNemar: exact two-sided binomial test on the
images exactly one model classifies correctly. Every number comes from the run folders above.</p>
</body></html>
"""


def write(items: list[runs.Run | str | Path], out: str | Path, title: str = "Fashion-MNIST study",
          data_dir: str | Path | None = None) -> Path:
    out = runs.output_file(out)
    runs.write_text(out, build(items, title, data_dir))
    return out
