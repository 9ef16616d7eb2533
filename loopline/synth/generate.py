"""``loopline synth``: generate a dataset of synthetic stills or videos with exact ground truth.

Output layout (DIR):

- ``images/``  frames (PNG, 8- or 16-bit; TIFF with ``--format tif``)
- ``labels/``  YOLO-seg labels, one ``.txt`` per image (class 0 dislocation, 1 loop)
- ``params/``  one scene JSON per image or video: every parameter and seed; regenerates it
- ``coco.json``  COCO instances (categories 1 dislocation, 2 loop)
- ``truth.json`` per sequence and frame: every line's polyline, length, pile-up and id; every
  loop's ellipse and id; the pile-ups' glide directions and velocities
- ``data.yaml``  ultralytics dataset file

Each sample ``i`` draws from ``SeedSequence([seed, i])``: the same seed gives byte-identical
files, whatever the number of worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.layout import (
    CocoBuilder,
    dump_json,
    write_data_yaml,
    write_image,
    write_yolo_labels,
)
from .params import Preset, load_preset
from .render import BackgroundCache, render_frame
from .scene import list_backgrounds, sample_scene

logger = logging.getLogger(__name__)

__all__ = ["SynthResult", "generate", "render_scene_files", "sequence_truth"]


@dataclass(frozen=True)
class SynthResult:
    out: Path
    images: int
    sequences: int
    instances: int
    seconds: float


def sequence_truth(scene: dict[str, Any]) -> dict[str, Any]:
    """The per-sequence part of truth.json that does not depend on the frame."""
    pileups = []
    for pu in scene["pileups"]:
        a = np.deg2rad(pu["slip_angle"])
        offs = np.array([d["offset"] for d in pu["dislocations"]])
        vel = pu["lead_velocity"] - offs * pu["spacing_rate"] / max(scene["frames"] - 1, 1)
        pileups.append(
            {
                "id": pu["id"],
                "slip_angle_deg": pu["slip_angle"],
                "slip_width_px": pu["slip_width"],
                "glide_dir": [round(float(np.cos(a)), 6), round(float(np.sin(a)), 6)],
                "dislocation_ids": [d["id"] for d in pu["dislocations"]],  # leader first
                "velocity_px_per_frame": [round(float(v), 6) for v in vel],
            }
        )
        if pu.get("avalanche"):  # the burst on top of the glide (scene.pileup_frame)
            pileups[-1]["avalanche"] = dict(pu["avalanche"])
    return {"pileups": pileups}


def _stem(scene: dict[str, Any], t: int | None) -> str:
    base = f"{scene['preset']}-{scene['seed']}-{scene['index']:05d}"
    return base if t is None else f"{base}-f{t:05d}"


def render_scene_files(
    scene: dict[str, Any], out: Path, *, fmt: str = "png", backgrounds: Path | None = None
) -> dict[str, Any]:
    """Render every frame of ``scene`` into ``out`` and return its records for COCO/truth."""
    video = scene["frames"] > 1
    w, h = scene["width"], scene["height"]
    cache = BackgroundCache(scene, backgrounds)
    frames = []
    for t in range(scene["frames"]):
        r = render_frame(scene, t, background=cache)
        stem = _stem(scene, t if video else None)
        name = f"images/{stem}.{fmt}"
        write_image(out / name, r.image)
        pairs = [(inst.cls, inst.polygon) for inst in r.instances]
        write_yolo_labels(out / "labels" / f"{stem}.txt", pairs, w, h)
        truth = dict(r.truth, image=name)
        frames.append({"file_name": name, "instances": pairs, "truth": truth,
                       "ids": [inst.truth["id"] for inst in r.instances]})  # fmt: skip
    dump_json(scene, out / "params" / f"{_stem(scene, None)}.json", indent=1)
    seq = {"name": _stem(scene, None), "params": f"params/{_stem(scene, None)}.json"}
    seq.update(sequence_truth(scene))
    return {"sequence": seq, "frames": frames, "w": w, "h": h}


def _work(args: tuple) -> dict[str, Any]:
    preset, seed, index, frames, bg_names, bg_dir, out, fmt = args
    scene = sample_scene(preset, seed, index, frames=frames, backgrounds=bg_names)
    return render_scene_files(scene, out, fmt=fmt, backgrounds=bg_dir)


def _default_signals() -> None:
    """A forked worker dies on SIGTERM and leaves Ctrl-C to its parent, whatever handlers
    the parent had installed (``Pool.terminate`` sends SIGTERM and waits)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_pool(jobs: int):
    """The generator's process pool: forked workers (spawned on Windows) that die on SIGTERM
    whatever handler the parent had installed (:func:`_default_signals`)."""
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    return ctx.Pool(jobs, initializer=_default_signals)


def _results(tasks: list[tuple], jobs: int) -> Iterator[dict[str, Any]]:
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(_work, tasks)
        return
    with worker_pool(jobs) as pool:
        yield from pool.imap(_work, tasks, chunksize=1)


def generate(
    out: Path,
    *,
    preset: str | Preset = "M2",
    count: int = 16,
    seed: int = 0,
    video: bool = False,
    frames: int | None = None,
    overrides: dict[str, Any] | None = None,
    backgrounds: Path | None = None,
    fmt: str = "png",
    jobs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SynthResult:
    """Generate ``count`` stills (or videos of ``frames`` frames) into ``out``.

    Raises
    ------
    ParameterError
        For an unknown preset or parameter, or a value out of range.
    FileExistsError
        If ``out`` already holds a dataset and ``overwrite`` is false.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if fmt not in ("png", "tif"):
        raise ValueError(f"format must be 'png' or 'tif', got {fmt!r}")
    p = preset if isinstance(preset, Preset) else load_preset(preset, overrides)
    n_frames = 1
    if video:
        n_frames = int(frames if frames is not None else p.fixed("frames"))
        if n_frames < 2:
            raise ValueError(f"a video needs at least 2 frames, got {n_frames}")
    out = Path(out)
    if (out / "coco.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
    for sub in ("images", "labels", "params"):
        if overwrite and (out / sub).exists():
            shutil.rmtree(out / sub)
        (out / sub).mkdir(parents=True, exist_ok=True)
    bg_names = list_backgrounds(backgrounds)
    jobs = jobs or os.cpu_count() or 1
    tasks = [(p, seed, i, n_frames, bg_names, backgrounds, out, fmt) for i in range(count)]

    t0 = time.perf_counter()
    coco = CocoBuilder()
    sequences = []
    n_images = n_inst = 0
    results = _results(tasks, jobs)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        cols = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeRemainingColumn())
        bar = Progress(*cols, BarColumn(bar_width=None), transient=True)
    else:
        bar = None
    what = "videos" if video else "images"
    with bar if bar is not None else _Null():
        task = bar.add_task(f"synth {p.name} {what}", total=count) if bar else None
        for res in results:
            w, h = res["w"], res["h"]
            seq_frames = []
            for fr in res["frames"]:
                image_id = coco.add_image(fr["file_name"], w, h)
                for (cls, poly), oid in zip(fr["instances"], fr["ids"], strict=True):
                    coco.add(image_id, cls, poly, w, h, track_id=oid)
                    n_inst += 1
                seq_frames.append(fr["truth"])
                n_images += 1
            sequences.append(dict(res["sequence"], frames=seq_frames))
            if bar is not None:
                bar.advance(task)
    coco.write(out / "coco.json")
    truth = {
        "version": 1,
        "kind": "videos" if video else "stills",
        "preset": p.name,
        "seed": seed,
        "preset_values": p.as_json(),
        "width": p.fixed("width"),
        "height": p.fixed("height"),
        "nm_per_px": p.fixed("nm_per_px"),
        "fps": p.fixed("fps"),
        "classes": ["dislocation", "loop"],
        "sequences": sequences,
    }
    dump_json(truth, out / "truth.json")
    write_data_yaml(out)
    dt = time.perf_counter() - t0
    logger.info("wrote %d images (%d sequences) to %s in %.1f s", n_images, count, out, dt)
    return SynthResult(out=out, images=n_images, sequences=count, instances=n_inst, seconds=dt)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
