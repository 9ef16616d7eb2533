"""Configuration of the daemon: ``defaults.toml`` → frozen dataclasses, validated once.

Layers, each overriding the one before: ``defaults.toml`` beside this file, the user's TOML
file (``--config``), then ``--set SECTION.KEY=VALUE`` pairs and named command-line flags.
An unknown section or key, a value of the wrong type, or a value outside its range raises
:class:`ConfigError` with a message naming the key, so a typo fails at start-up instead of
hours later.

>>> cfg = load_config(overrides={"batch.size": 8})
>>> cfg.batch.size
8
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..engines.base import INFERENCE_MODES
from ..errors import ConfigError  # one error type for every config section (also [view])
from .ingest import SERVE_PROTOCOLS

__all__ = ["ConfigError", "DaemonConfig", "load_config", "parse_set"]


def _rng(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


def _choice(*values: str | int) -> dict[str, Any]:
    return {"choices": values}


def _per_class(key: str, value: Any, rule: Any) -> tuple[float, ...]:
    """``[]`` (the model's own), one value for every class, or one per class, checked by
    ``rule`` (the one rule of that value, which raises ValueError)."""
    if isinstance(value, list | tuple) and not value:
        return ()
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple) or (
            isinstance(value, list | tuple) and not all(isinstance(v, int | float)
                                                        and not isinstance(v, bool)
                                                        for v in value)):  # fmt: skip
        raise ConfigError(f"{key} must be [] (the model's own), a number or a list of numbers "
                          f"(one per class: dislocation, loop), got {value!r}")  # fmt: skip
    try:
        return tuple(float(v) for v in rule(value))
    except ValueError as e:
        raise ConfigError(f"{key}: {e} ([] = the model's own)") from None


def _conf(key: str, value: Any) -> tuple[float, ...]:
    """A score threshold: :func:`loopline.models.score_thresholds`."""
    from ..models import score_thresholds

    return _per_class(key, value, score_thresholds)


def _mask_threshold(key: str, value: Any) -> tuple[float, ...]:
    """A mask probability cut: :func:`loopline.models.mask_thresholds`."""
    from ..models import mask_thresholds

    return _per_class(key, value, lambda v: mask_thresholds(v, 2))


@dataclass(frozen=True)
class SourceConfig:
    protocol: str = field(metadata=_choice(*SERVE_PROTOCOLS))
    endpoint: str
    socket: str = field(metadata=_choice("pull", "sub"))
    bind: bool
    path: str
    pace: bool
    rate: float = field(metadata=_rng(0.0, 10000.0))
    rcvhwm: int = field(metadata=_rng(1, 10_000_000))
    times_from_names: str
    curve_server_key: str
    curve_client_secret: str
    curve_clients: str


@dataclass(frozen=True)
class EngineConfig:
    model: str
    engine: str
    imgsz: int = field(metadata=_rng(0, 4096))  # 0: the model's own
    conf: tuple = field(metadata={"check": _conf})
    iou: float = field(metadata=_rng(0.01, 1.0))
    mask_threshold: tuple = field(metadata={"check": _mask_threshold})
    inference: str = field(metadata=_choice(*INFERENCE_MODES))
    tile_overlap: int = field(metadata=_rng(0, 2048))
    line_snap: float = field(metadata=_rng(-1.0, 20.0))
    line_dedupe: float = field(metadata=_rng(-1.0, 20.0))
    loop_vote: int = field(metadata=_choice(-1, 0, 1))
    mask_annotations: bool
    ignore_regions: str
    device: str
    threads: int = field(metadata=_rng(0, 256))
    workers: int = field(metadata=_rng(1, 16))
    factory: str
    watch: str


@dataclass(frozen=True)
class BatchConfig:
    size: int = field(metadata=_rng(1, 256))
    deadline_ms: float = field(metadata=_rng(0.0, 10_000.0))
    max_pending: int = field(metadata=_rng(0, 10_000))
    max_inflight: int = field(metadata=_rng(0, 10_000))


@dataclass(frozen=True)
class CalibrationConfig:
    profile: str
    nm_per_px: float = field(metadata=_rng(0.0, 1e6))
    fps: float = field(metadata=_rng(0.0, 1e6))
    override: bool


@dataclass(frozen=True)
class PoolConfig:
    slots: int = field(metadata=_rng(4, 4096))
    max_height: int = field(metadata=_rng(16, 16384))
    max_width: int = field(metadata=_rng(16, 16384))
    max_instances: int = field(metadata=_rng(1, 1024))
    slot_timeout_s: float = field(metadata=_rng(1.0, 3600.0))
    max_memory_mb: float = field(metadata=_rng(64.0, 1048576.0))


@dataclass(frozen=True)
class OutputConfig:
    dir: str
    mp4: bool
    video_fps: float = field(metadata=_rng(0.0, 10000.0))
    video_codec: str = field(metadata=_choice("auto", "h264", "mp4v"))
    video_crf: int = field(metadata=_rng(0, 51))
    raw: str = field(metadata=_choice("none", "npy", "tiff"))
    csv: bool
    parquet: bool
    flush_rows: int = field(metadata=_rng(1, 1_000_000))
    result_timeout_s: float = field(metadata=_rng(0.1, 3600.0))
    record_wait_s: float = field(metadata=_rng(0.0, 3600.0))
    record_crowded: float = field(metadata=_rng(0.1, 1.0))
    resume_free_mb: float = field(metadata=_rng(0.0, 1e9))
    disk_probe_s: float = field(metadata=_rng(0.05, 3600.0))


@dataclass(frozen=True)
class PublishConfig:
    enabled: bool
    endpoint: str
    hwm: int = field(metadata=_rng(1, 100_000))
    jpeg: bool
    jpeg_quality: int = field(metadata=_rng(1, 100))
    jpeg_max_side: int = field(metadata=_rng(16, 16384))
    curve_secret_key: str
    curve_clients: str


@dataclass(frozen=True)
class MetricsConfig:
    prometheus_port: int = field(metadata=_rng(0, 65535))
    prometheus_host: str
    interval_s: float = field(metadata=_rng(0.05, 3600.0))


@dataclass(frozen=True)
class ControlConfig:
    endpoint: str
    curve_secret_key: str
    curve_clients: str


@dataclass(frozen=True)
class RunConfig:
    until_series_end: bool
    duration_s: float = field(metadata=_rng(0.0, 1e9))
    restarts: int = field(metadata=_rng(0, 1_000_000))
    restart_window_s: float = field(metadata=_rng(1.0, 1e9))


@dataclass(frozen=True)
class AlarmsConfig:
    """``[alarms]``: the thresholds of :class:`loopline.analysis.alarms.AlarmConfig` (same
    names; 0 turns a rule off)."""

    enabled: bool
    hold_frames: int = field(metadata=_rng(0, 1_000_000))
    spacing_below_nm: float = field(metadata=_rng(0.0, 1e9))
    spacing_clear_nm: float = field(metadata=_rng(0.0, 1e9))
    lead_velocity_above_nm_per_s: float = field(metadata=_rng(0.0, 1e12))
    lead_velocity_clear_nm_per_s: float = field(metadata=_rng(0.0, 1e12))
    avalanche_k: float = field(metadata=_rng(0.0, 1e6))
    avalanche_clear_k: float = field(metadata=_rng(0.0, 1e6))
    avalanche_min_lines: int = field(metadata=_rng(1, 10_000))
    avalanche_baseline_frames: int = field(metadata=_rng(2, 1_000_000))
    avalanche_min_baseline: int = field(metadata=_rng(2, 1_000_000))
    avalanche_floor_px_per_frame: float = field(metadata=_rng(0.0, 1e6))
    loop_stall_window_frames: int = field(metadata=_rng(0, 1_000_000))
    loop_stall_fraction: float = field(metadata=_rng(0.0, 1.0))
    loop_stall_clear_fraction: float = field(metadata=_rng(0.0, 1.0))
    behind_latency_ms: float = field(metadata=_rng(0.0, 1e9))
    behind_clear_ms: float = field(metadata=_rng(0.0, 1e9))
    disk_free_below_gb: float = field(metadata=_rng(0.0, 1e9))
    disk_clear_gb: float = field(metadata=_rng(0.0, 1e9))
    disk_check_s: float = field(metadata=_rng(0.1, 86400.0))


@dataclass(frozen=True)
class DaemonConfig:
    source: SourceConfig
    engine: EngineConfig
    batch: BatchConfig
    calibration: CalibrationConfig
    pool: PoolConfig
    output: OutputConfig
    publish: PublishConfig
    metrics: MetricsConfig
    control: ControlConfig
    run: RunConfig
    alarms: AlarmsConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> DaemonConfig:
        """A copy with some keys changed: ``cfg.replace(batch={"size": 2})`` (validated)."""
        flat = {f"{s}.{k}": v for s, kv in sections.items() for k, v in kv.items()}
        return _build(_merge(self.to_dict(), flat))

    @property
    def max_pending(self) -> int:
        return self.batch.max_pending or self.batch.size

    @property
    def max_inflight(self) -> int:
        return self.batch.max_inflight or 2 * self.batch.size * self.engine.workers

    @property
    def replay_waits(self) -> bool:
        """A file replayed unpaced: every frame is analysed (the receiver waits for the
        analysis, the batcher never skips), as ``loopline analyze`` reads it."""
        return self.source.protocol == "file" and not self.source.pace


_SECTIONS: dict[str, type] = {
    "source": SourceConfig, "engine": EngineConfig, "batch": BatchConfig,
    "calibration": CalibrationConfig, "pool": PoolConfig, "output": OutputConfig,
    "publish": PublishConfig, "metrics": MetricsConfig, "control": ControlConfig,
    "run": RunConfig, "alarms": AlarmsConfig,
}  # fmt: skip


def _defaults() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath("defaults.toml").read_text()
    return tomllib.loads(text)


def _check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    if "check" in f.metadata:  # a key with a rule of its own
        return f.metadata["check"](key, value)
    kind = {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    lo, hi = f.metadata.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key} must lie in [{lo}, {hi}], got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def _merge(base: dict[str, dict[str, Any]], flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {s: dict(kv) for s, kv in base.items()}
    for key, value in flat.items():
        sec, _, name = key.partition(".")
        if sec not in _SECTIONS:
            raise ConfigError(f"unknown config section {sec!r} in {key!r} "
                              f"(known: {', '.join(_SECTIONS)})")  # fmt: skip
        if name not in out[sec]:
            raise ConfigError(f"unknown config key {key!r} (known in [{sec}]: "
                              f"{', '.join(out[sec])})")  # fmt: skip
        out[sec][name] = value
    return out


def _build(tree: dict[str, dict[str, Any]]) -> DaemonConfig:
    sections = {}
    for sec, cls in _SECTIONS.items():
        values = tree.get(sec, {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {n: _check_value(f"{sec}.{n}", fields[n], values[n]) for n in fields}
        sections[sec] = cls(**kwargs)
    cfg = DaemonConfig(**sections)
    if cfg.engine.imgsz % 32:
        raise ConfigError(f"engine.imgsz must be a multiple of 32 (0 = the model's own), got "
                          f"{cfg.engine.imgsz}")  # fmt: skip
    if cfg.engine.imgsz and cfg.engine.tile_overlap > cfg.engine.imgsz // 2:
        raise ConfigError(f"engine.tile_overlap must lie in [0, {cfg.engine.imgsz // 2}] px "
                          f"(engine.imgsz / 2), got {cfg.engine.tile_overlap}")  # fmt: skip
    if cfg.engine.ignore_regions:
        from ..engines.burnt_in import check_regions

        try:
            check_regions(cfg.engine.ignore_regions)
        except ValueError as e:
            raise ConfigError(f"engine.{e}") from None
    if cfg.engine.factory and ":" not in cfg.engine.factory:
        raise ConfigError(f"engine.factory must read 'module:callable', got {cfg.engine.factory!r}")
    if cfg.source.protocol == "file" and not cfg.source.path:
        raise ConfigError("source.path is required when source.protocol = 'file'")
    for name in ("source.endpoint", "publish.endpoint"):
        sec, _, key = name.partition(".")
        ep = getattr(getattr(cfg, sec), key)
        if "://" not in ep:
            raise ConfigError(f"{name} must be a ZeroMQ URL like tcp://127.0.0.1:5555, got {ep!r}")
    ctl = cfg.control
    if ctl.endpoint not in ("", "none") and "://" not in ctl.endpoint:
        raise ConfigError(f"control.endpoint must be \"\", \"none\" or a ZeroMQ URL like "
                          f"tcp://127.0.0.1:5557, got {ctl.endpoint!r}")  # fmt: skip
    if (ctl.curve_secret_key or ctl.curve_clients) and not ctl.endpoint.startswith("tcp://"):
        raise ConfigError("control.curve_secret_key and control.curve_clients need a tcp:// "
                          f"control.endpoint, got {ctl.endpoint!r} (the default socket is "
                          "this user's only)")  # fmt: skip
    a = cfg.alarms
    for clear, at, above in (("spacing_clear_nm", "spacing_below_nm", False),
                             ("lead_velocity_clear_nm_per_s", "lead_velocity_above_nm_per_s", True),
                             ("avalanche_clear_k", "avalanche_k", True),
                             ("loop_stall_clear_fraction", "loop_stall_fraction", False),
                             ("behind_clear_ms", "behind_latency_ms", True),
                             ("disk_clear_gb", "disk_free_below_gb", False)):  # fmt: skip
        c, v = getattr(a, clear), getattr(a, at)
        if v and c and (c > v if above else c < v):
            raise ConfigError(f"alarms.{clear} must lie {'below' if above else 'above'} "
                              f"alarms.{at} ({v}), got {c}")  # fmt: skip
    return cfg


#: sections of the one config file that belong to other commands: ``[view]`` (and
#: ``[view.alarms]``) is read and validated by ``loopline view`` (loopline.viewers.config)
OTHER_SECTIONS = ("view",)


def _flatten_file(data: dict[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for sec, kv in data.items():
        if sec in OTHER_SECTIONS:
            continue
        if not isinstance(kv, dict):
            raise ConfigError(f"{origin}: top-level key {sec!r} must be a [section] table")
        for k, v in kv.items():
            flat[f"{sec}.{k}"] = v
    return flat


def parse_set(text: str) -> tuple[str, Any]:
    """``"batch.size=8"`` → ``("batch.size", 8)``; values are TOML, bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(
    path: str | Path | None = None, *, overrides: dict[str, Any] | None = None
) -> DaemonConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (``"section.key": value``)."""
    tree = _defaults()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        tree = _merge(tree, _flatten_file(data, str(p)))
    tree = _merge(tree, dict(overrides or {}))
    return _build(tree)
