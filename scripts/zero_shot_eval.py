#!/usr/bin/env python3
"""Leave-one-dataset-out evaluation of models on the bundled real sets, one markdown table.

For every ``--model`` (a model file, a shipped name, or ``ridge``) and every real set of
``--real`` (default ``../shared/data/real``), the set is imported into ``--work`` (default
``runs/zero-shot``; imported once, and again only when its source files or this script's
import recipe change) exactly as the model card does it, optionally split in time by
``scripts/split_dataset.py``, and measured with ``loopline eval``'s own code
(``loopline.evaluation.evaluate``). A model evaluated on a set it never saw in training gives
the zero-shot figure; on the second half of a set whose first half it was fine-tuned on, the
fine-tuned figure.

Sets (frames in natural file-name order, which is time order within each video):

=====================  =============================================  ======  ============
set                    import                                          frames  first half
=====================  =============================================  ======  ============
tanaka-twip-2um        ``--format tanaka`` (ds/ lines, st/ kept as     63      32
                       distractors)
creme-loops-512        ``masks1 --format masks --class loop --images  16      8
                       imgs``
tanaka-twip-086um      ``--format tanaka``: st/ only, no dislocation  56      28
                       labels (a distractor-only set)
=====================  =============================================  ======  ============

Columns: line F1@3px and LAR@3px (the tolerance metrics for thin human strokes), loop F1 at
box IoU 0.15, N_re (loop count error), lines per frame predicted / labelled, mean
nearest-neighbour spacing predicted / labelled in px (spacing_re), slip-trace confusion (share
of predicted line skeleton pixels within 2 px of an st/ pixel; the labelled lines' own share in
brackets) and loop recall per equivalent-diameter bin (px). "-" where a figure does not apply
(no labelled lines, loops or distractors) or was not measurable.

Usage:
  scripts/zero_shot_eval.py --model loopline/models/defects.onnx --model ridge [--json OUT]
  scripts/zero_shot_eval.py --model M --second-half        # tanaka frames 32-62, creme 9-16
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopline.cli_args import add_loop_vote_argument
from loopline.datasets.importers import import_dataset
from loopline.evaluation.evaluate import EvalResult, evaluate, make_engine, operating_conf
from loopline.evaluation.metrics import size_bin_names
from loopline.models import score_thresholds

logger = logging.getLogger("zero_shot_eval")

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"

#: Bump when the import recipe changes, so that cached imports are made anew.
RECIPE = 1

PARTS = ("all", "first", "second")


@dataclass(frozen=True)
class RealSet:
    """How one real set is imported (``loopline import`` options) and halved."""

    name: str
    fmt: str
    source: str  # relative to the real-data folder
    first: int  # frames in the first half (scripts/split_dataset.py --first)
    images: str | None = None
    cls: str | None = None


SETS: tuple[RealSet, ...] = (
    RealSet("tanaka-twip-2um", "tanaka", "tanaka-twip-2um", 32),
    RealSet("creme-loops-512", "masks", "creme-loops-512/masks1", 8,
            images="creme-loops-512/imgs", cls="loop"),
    RealSet("tanaka-twip-086um", "tanaka", "tanaka-twip-086um", 28),
)  # fmt: skip


def _split_module():
    """``scripts/split_dataset.py``, loaded from beside this file (scripts are no package)."""
    path = Path(__file__).with_name("split_dataset.py")
    spec = importlib.util.spec_from_file_location("split_dataset", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def source_key(real: Path, s: RealSet) -> str:
    """Hash of the set's import recipe and of its source files' names and sizes."""
    h = hashlib.sha256(repr((RECIPE, s)).encode())
    for sub in (s.source, s.images):
        if sub is None:
            continue
        for p in sorted((real / sub).rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(real)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def prepare(real: Path, work: Path, s: RealSet, part: str) -> Path:
    """The dataset folder of ``part`` ("all", "first", "second") of set ``s``, made if needed.

    ``work/<set>/all`` is the import, ``first`` and ``second`` its halves in time, and
    ``key.txt`` the :func:`source_key` they were made from; a changed key remakes them all.

    Raises
    ------
    FileNotFoundError
        If the set's source folder is missing under ``real``.
    ValueError
        If ``part`` is not one of :data:`PARTS`, or the set is too short to halve there.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    src = real / s.source
    if not src.exists():
        raise FileNotFoundError(f"real set {s.name}: no {src}")
    home = work / s.name
    key = source_key(real, s)
    stamp = home / "key.txt"
    if not stamp.is_file() or stamp.read_text("utf-8").strip() != key:
        if home.exists():
            logger.info("%s: sources or recipe changed; importing anew", s.name)
            shutil.rmtree(home)
        home.mkdir(parents=True)
        res = import_dataset(src, home / "all", fmt=s.fmt, cls=s.cls,
                             images=None if s.images is None else real / s.images)  # fmt: skip
        logger.info("%s: imported %d frames, %d instances, %d distractor masks", s.name,
                    res.images, res.instances, res.distractors)  # fmt: skip
        stamp.write_text(key + "\n", "utf-8")
    if part != "all" and not (home / part).is_dir():
        split = _split_module()
        n = len(split.image_files(home / "all" / "images"))
        if not 0 < s.first < n:
            raise ValueError(
                f"{s.name}: halves at frame {s.first} need more than {s.first} frames, got {n}"
            )
        for p in ("first", "second"):
            if (home / p).exists():
                shutil.rmtree(home / p)
        split.split(home / "all", s.first, home / "first", home / "second")
    return home / part


def summary(model: str, s: RealSet, part: str, res: EvalResult) -> dict[str, Any]:
    """One table row: what the script reports of an evaluation."""
    m, d = res.metrics, res.details
    return {
        "model": model, "set": s.name, "part": part, "frames": m["images"],
        "line_f1_tol": m["line_f1_tol"], "lar_tol": m["lar_tol"], "loop_f1": m["loop_f1"],
        "n_re": m["n_re"], "lines_per_frame": m["lines_per_frame"],
        "lines_per_frame_gt": m["lines_per_frame_gt"], "spacing_px": m["spacing_px"],
        "spacing_gt_px": m["spacing_gt_px"], "spacing_re": m["spacing_re"],
        "slip_trace_confusion": m["slip_trace_confusion"],
        "slip_trace_confusion_labels": d["slip_trace_confusion_labels"],
        "loop_recall_by_size": m["loop_recall_by_size"], "loops_by_size": m["loops_by_size"],
        "metrics": m, "details": {k: v for k, v in d.items() if k != "per_class"},
    }  # fmt: skip


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if _missing(v) else format(v, spec)


def _pct(v: Any, signed: bool = True) -> str:
    return "-" if _missing(v) else f"{100 * v:{'+' if signed else ''}.1f} %"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as one markdown table (per model and set)."""
    bins = size_bin_names()
    head = ["model", "set", "frames", "line F1@3px", "LAR@3px", "loop F1", "N_re",
            "lines/frame pred / label", "spacing px pred / label (re)",
            "slip-trace conf. (labels)", *(f"loop R d{b}" for b in bins)]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        part = "" if r["part"] == "all" else f" ({r['part']} half)"
        spacing = (f"{_f(r['spacing_px'], '.1f')} / {_f(r['spacing_gt_px'], '.1f')} "
                   f"({_pct(r['spacing_re'])})")  # fmt: skip
        lines = f"{_f(r['lines_per_frame'], '.1f')} / {_f(r['lines_per_frame_gt'], '.1f')}"
        st = r["slip_trace_confusion"]
        conf = "-" if r["details"]["slip_trace_frames"] == 0 else (
            f"{_pct(st, False)} ({_pct(r['slip_trace_confusion_labels'], False)})")  # fmt: skip
        rec, n = r["loop_recall_by_size"], r["loops_by_size"]
        sizes = [("-" if rec is None or rec[b] is None else f"{rec[b]:.2f} ({n[b]})")
                 for b in bins]  # fmt: skip
        cells = [r["model"], r["set"] + part, str(r["frames"]), _f(r["line_f1_tol"]),
                 _f(r["lar_tol"]), _f(r["loop_f1"]), _pct(r["n_re"]), lines, spacing, conf,
                 *sizes]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    return v


def run(
    models: list[str],
    *,
    real: Path = REAL,
    work: Path = ROOT / "runs" / "zero-shot",
    sets: list[str] | None = None,
    part: str = "all",
    conf: float | tuple[float, ...] | None = None,
    tol: float = 3.0,
    imgsz: int | None = None,
    mask_threshold: float | None = None,
    line_dedupe: float | None = None,
    line_snap: float | None = None,
    loop_vote: bool | None = None,
    batch: int = 8,
) -> list[dict[str, Any]]:
    """Evaluate every model on every chosen set; one :func:`summary` row per pair.

    Sets whose source folder is missing under ``real`` are skipped with a warning; if none is
    there, FileNotFoundError. ``conf``: one score threshold or one per class; None: each
    model's own (``loopline.evaluation.evaluate.operating_conf``).
    """
    chosen = [s for s in SETS if sets is None or s.name in sets]
    folders = []
    for s in chosen:
        try:
            folders.append((s, prepare(real, work, s, part)))
        except FileNotFoundError as e:
            logger.warning("%s; skipped", e)
    if not folders:
        raise FileNotFoundError(
            f"none of the real sets {', '.join(s.name for s in chosen)} is under {real}"
        )
    rows = []
    for model in models:
        engine = make_engine(model, conf=conf, imgsz=imgsz, mask_threshold=mask_threshold,
                             line_dedupe=line_dedupe, line_snap=line_snap,
                             loop_vote=loop_vote)  # fmt: skip
        for s, folder in folders:
            t0 = time.perf_counter()
            res = evaluate(engine, folder, conf=operating_conf(model, conf), tol=tol,
                           batch=batch)  # fmt: skip
            logger.info("%s on %s (%s): %d frames in %.1f s", model, s.name, part,
                        res.metrics["images"], time.perf_counter() - t0)  # fmt: skip
            rows.append(summary(model, s, part, res))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="PATH|NAME",
                   help="model file, shipped name or 'ridge'; repeat for several")  # fmt: skip
    p.add_argument("--real", type=Path, default=REAL, help="folder of the real sets")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "zero-shot",
                   help="where the imported sets are kept between runs")  # fmt: skip
    p.add_argument("--set", dest="sets", action="append", choices=[s.name for s in SETS],
                   help="only this set (repeat for several; default all)")  # fmt: skip
    half = p.add_mutually_exclusive_group()
    half.add_argument("--first-half", dest="part", action="store_const", const="first",
                      help="only the first half of each set in time (the tuning half)")
    half.add_argument("--second-half", dest="part", action="store_const", const="second",
                      help="only the second half (the fine-tuned figures' test half)")
    p.add_argument("--conf", type=lambda t: tuple(float(c) for c in score_thresholds(t)),
                   default=None, metavar="P[,P]",
                   help="score threshold, one or one per class (dislocation,loop) (default: "
                        "each model's own: 0.15,0.25 for the shipped model, else 0.25)")
    p.add_argument("--tol", type=float, default=3.0, help="tolerance of LAR@tol, F1@tol (px)")
    p.add_argument("--imgsz", type=int, default=None, help="network input size (px)")
    p.add_argument("--mask-threshold", type=float, default=None, metavar="P",
                   help="mask probability cut (default: the shipped operating point)")
    p.add_argument("--line-dedupe", type=float, default=None, metavar="PX",
                   help="duplicate-line suppression distance, px (0 = off; default: the shipped "
                        "model's operating point)")  # fmt: skip
    p.add_argument("--line-snap", type=float, default=None, metavar="PX",
                   help="how far a centre line may move onto its valley, px (0 = off; default: "
                        "the shipped model's operating point)")  # fmt: skip
    add_loop_vote_argument(p)
    p.add_argument("--batch", type=int, default=8, help="frames per engine call")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every row as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    part = a.part or "all"
    try:
        rows = run(a.model, real=a.real, work=a.work, sets=a.sets, part=part, conf=a.conf,
                   tol=a.tol, imgsz=a.imgsz, mask_threshold=a.mask_threshold,
                   line_dedupe=a.line_dedupe, line_snap=a.line_snap,
                   loop_vote=a.loop_vote, batch=a.batch)  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"zero_shot_eval: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"part": part, "conf": a.conf, "tol": a.tol, "real": str(a.real),
               "rows": rows}  # fmt: skip
        a.json.write_text(json.dumps(_jsonable(doc), indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
