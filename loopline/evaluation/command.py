"""``loopline eval``: accuracy of a model on a labelled dataset (mAP, LAR, loop F1, spacing)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..cli_args import DEFAULT_MODEL, INFERENCE_HELP, add_loop_vote_argument, add_model_arguments
from ..engines.base import INFERENCE_MODES
from ..errors import CliError

HELP = "evaluate a model on a dataset (mAP, LAR, line F1@tol, loop F1, relative errors)"

#: Table rows a dataset of box-only labels cannot measure (None in its metrics).
_SHAPE_ROWS = {"mask mAP50", "mask mAP50-95", "LAR", "LAR@tol", "line F1@tol", "D_re", "F_re",
               "spacing_re", "slip-trace confusion"}  # fmt: skip



def _cuts(text: str) -> tuple[float, ...]:
    """``--mask-threshold 0.4`` or ``0.4,0.5`` (per class), checked by the one rule."""
    from ..models import mask_thresholds

    try:
        return tuple(float(v) for v in mask_thresholds([float(x) for x in text.split(",")], 2))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("mask_threshold", "--mask-threshold")
                                         .replace("got [", "got ").rstrip("]")) from None

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(
        p, defaults={"--model": DEFAULT_MODEL},
        help_suffix={"--conf": "here also the threshold of LAR, F1 and the relative errors "
                               "(mAP ranks every detection down to --map-conf)"},
    )  # fmt: skip
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="dataset folder from loopline synth or loopline import")  # fmt: skip
    p.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--figure", type=Path, metavar="PNG",
                   help="figure of the worst and best frames (default: beside --json, or "
                        "eval-<DIR name>.png)")  # fmt: skip
    p.add_argument("--map-conf", type=float, default=0.001,
                   help="engine score floor for mAP (default 0.001, as ultralytics)")  # fmt: skip
    p.add_argument("--mask-threshold", type=_cuts, default=None, metavar="P[,P]",
                   help="mask probability cut of the YOLO runtimes, in (0, 1): one for every "
                        "class or one per class (dislocation,loop) (default: the shipped "
                        "model's operating point, 0.5 for other models)")  # fmt: skip
    p.add_argument("--inference", choices=INFERENCE_MODES, default=None,
                   help=INFERENCE_HELP + " (default: tiles)")  # fmt: skip
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="least overlap of neighbouring tiles, px (default 64)")  # fmt: skip
    p.add_argument("--tile-max", type=int, default=None, metavar="PX",
                   help="largest tile side, px, a multiple of 32 >= --imgsz, where the runtime "
                        "takes any input size (default 1.25 x imgsz: 640 for 512; --imgsz: "
                        "tiles of imgsz only)")  # fmt: skip
    p.add_argument("--line-dedupe", type=float, default=None, metavar="PX",
                   help="drop a dislocation whose centre line retraces a better-scored one "
                        "within PX (0 = off; default: the shipped model's operating point, "
                        "off for other models)")  # fmt: skip
    p.add_argument("--line-snap", type=float, default=None, metavar="PX",
                   help="move each dislocation's centre line up to PX onto the valley it rides "
                        "in the full-resolution frame, before --line-dedupe (0 = off; default: "
                        "the shipped model's operating point, off for other models)")  # fmt: skip
    add_loop_vote_argument(p)
    p.add_argument("--tol", type=float, default=3.0, help="tolerance of LAR@tol, F1@tol (px)")
    p.add_argument("--batch", type=int, default=8, help="frames per engine call")


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{100 * v:+.1f} %" if pct else f"{v:.3f}"


def _share(v: float | None) -> str:
    """A share as an unsigned percentage, "-" where missing."""
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f} %"


def _box_f1_note(d: dict[str, Any]) -> str:
    pr = f"P {_fmt(d['precision'])}, R {_fmt(d['recall'])}"
    return f"box IoU >= 0.5; {pr}; {d['labelled']} labelled"


def _table(metrics: dict[str, Any], details: dict[str, Any], title: str):
    from rich.table import Table

    box_only = metrics["box_only_labels"]
    t = Table(title=title, show_lines=False, caption=details["box_only_note"])
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("note", style="dim")
    lpf, lpf_gt = metrics["lines_per_frame"], metrics["lines_per_frame_gt"]
    st_note = (
        f"line skeleton px within 2 px of distractor labels; {details['slip_trace_frames']} "
        f"frames, {details['slip_trace_pixels']} px; labelled lines "
        f"{_share(details['slip_trace_confusion_labels'])}"
        if details["slip_trace_frames"] else "no distractor (st/) masks in this dataset"
    )
    f1c = details["box_f1"]
    rows = [
        ("box mAP50", metrics["box_map50"], "COCO AP, IoU 0.5"),
        ("box mAP50-95", details["box_map50_95"], ""),
        ("box F1 dislocations", metrics["box_f1_dislocation"], _box_f1_note(f1c["dislocation"])),
        ("box F1 loops", metrics["box_f1_loop"], _box_f1_note(f1c["loop"])),
        ("mask mAP50", metrics["mask_map50"], ""),
        ("mask mAP50-95", metrics["mask_map50_95"], ""),
        ("LAR", metrics["lar"], f"Ruzaeva Alg. 1, {details['lines']} lines"),
        ("LAR@tol", metrics["lar_tol"], "skeletons within tolerance"),
        ("line F1@tol", metrics["line_f1_tol"],
         f"P {_fmt(details['line_precision_tol'])}, R {_fmt(details['line_recall_tol'])}"),
        ("lines per frame", "-" if lpf is None else f"{lpf:.1f}",
         "" if lpf_gt is None else f"{lpf_gt:.1f} labelled"),
        ("slip-trace confusion", _share(metrics["slip_trace_confusion"]), st_note),
        ("loop F1", metrics["loop_f1"],
         f"box IoU >= 0.15; P {_fmt(details['loop_precision'])}, "
         f"R {_fmt(details['loop_recall'])}"),
        ("N_re", metrics["n_re"], f"{details['loops_pred']} vs {details['loops_gt']} loops"),
        ("D_re", metrics["d_re"], f"mean diameter {_fmt(details['loop_diameter_pred_px'])} vs "
                                  f"{_fmt(details['loop_diameter_gt_px'])} px"),
        ("F_re", metrics["f_re"], "foreground fraction"),
        ("spacing_re", metrics["spacing_re"],
         f"{_fmt(metrics['spacing_px'])} vs {_fmt(metrics['spacing_gt_px'])} px; "
         f"pile-ups {details['spacing_pileups']}; "
         f"mean |re| {_fmt(details['spacing_abs_re'], True)}"),
    ]  # fmt: skip
    if box_only:
        rows = [(n, v, "not computed: box-only labels" if n in _SHAPE_ROWS else note)
                for n, v, note in rows]  # fmt: skip
        rows.insert(0, ("box-only labels", box_only, details["box_only_note"]))
    recall, counts = metrics["loop_recall_by_size"], metrics["loops_by_size"]
    if recall is None:
        why = "not computed: box-only labels" if box_only else "no labelled loops"
        rows.append(("loop recall by size", None, why))
    else:
        found = details["loops_found_by_size"]
        for b, r in recall.items():
            rows.append((f"loop recall d {b} px", r, f"{found[b]} of {counts[b]} loops"))
    rows.append(("images", metrics["images"],
                 f"{details['inference_ms_per_frame']:.0f} ms/frame inference"))  # fmt: skip
    pct = {"N_re", "D_re", "F_re", "spacing_re"}
    for name, v, note in rows:
        t.add_row(name, v if isinstance(v, str) else _fmt(v, name in pct), note)
    return t


def _round(v: Any) -> Any:
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return round(float(v), 6)


def write_json(metrics: dict[str, Any], path: Path) -> None:
    """The metrics of ``METRIC_KEYS`` as JSON: floats to 6 digits, None where not applicable.

    A dataset with box-only labels adds ``"note"``: which metrics were not computed.
    """
    from .evaluate import BOX_ONLY_NOTE, METRIC_KEYS

    out = {k: _round(metrics[k]) for k in METRIC_KEYS}
    if metrics["box_only_labels"]:
        out["note"] = BOX_ONLY_NOTE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n", "utf-8")


def _engine(a: argparse.Namespace):
    from .evaluate import make_engine

    try:
        return make_engine(a.model, conf=a.conf, map_conf=a.map_conf, imgsz=a.imgsz,
                           device=a.device, mask_threshold=a.mask_threshold,
                           inference=a.inference, tile_overlap=a.tile_overlap,
                           tile_max=a.tile_max, line_dedupe=a.line_dedupe,
                           line_snap=a.line_snap, loop_vote=a.loop_vote)  # fmt: skip
    except (ValueError, FileNotFoundError, KeyError, ImportError, TypeError) as e:
        raise CliError(str(e)) from None


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from .data import Dataset
    from .evaluate import evaluate, operating_conf, save_figure

    if not 0.0 <= a.map_conf <= 1.0:
        raise CliError(f"--map-conf must lie in [0, 1], got {a.map_conf}")
    try:
        ds = Dataset(a.data)
    except ValueError as e:
        raise CliError(str(e)) from None
    engine = _engine(a)
    try:
        res = evaluate(engine, ds, conf=operating_conf(a.model, a.conf), tol=a.tol, batch=a.batch,
                       progress=sys.stderr.isatty())  # fmt: skip
    except ValueError as e:
        raise CliError(str(e)) from None
    con = Console()
    title = f"loopline eval: {a.model} on {a.data}"
    con.print(_table(res.metrics, res.details, title))
    if a.json is not None:
        write_json(res.metrics, a.json)
        con.print(f"metrics: {a.json}")
    fig = a.figure
    if fig is None:
        fig = a.json.with_suffix(".png") if a.json is not None else Path(f"eval-{a.data.name}.png")
    written = save_figure(res, fig, title=title)
    if written is not None:
        con.print(f"figure: {written}")
    return 0
