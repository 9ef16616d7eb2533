"""Configuration of ``loopline view``: ``defaults.toml`` → frozen dataclasses, validated once.

The viewer reads only the ``[view]`` and ``[view.alarms]`` tables of a config file, so the
daemon's config file can carry them beside its own sections; a ``[publish]`` table's
``endpoint`` is used as the default stream address. Unknown keys under ``[view]`` and values
out of range raise :class:`ViewConfigError` naming the key.

>>> load_view_config(overrides={"alarms.min_spacing_nm": 20}).alarms.min_spacing_nm
20.0
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "AlarmConfig",
    "ViewConfig",
    "ViewConfigError",
    "allowed_host_names",
    "load_view_config",
]

_HOST_NAME = re.compile(r"[A-Za-z0-9.:_-]+")


def allowed_host_names(text: str) -> list[str]:
    """``view.allowed_hosts`` ("a.lab, 10.0.0.5") as lower-case names."""
    return [h.strip().lower().rstrip(".") for h in text.split(",") if h.strip()]


class ViewConfigError(ConfigError):
    """A viewer configuration key (``[view]``) is unknown or its value is invalid."""


def _rng(lo: float, hi: float) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True)
class AlarmConfig:
    min_spacing_nm: float = field(default=0.0, metadata=_rng(0.0, 1e9))
    max_velocity_nm_s: float = field(default=0.0, metadata=_rng(0.0, 1e12))
    velocity_jump_nm_s: float = field(default=0.0, metadata=_rng(0.0, 1e12))
    max_latency_ms: float = field(default=1000.0, metadata=_rng(0.0, 1e9))
    max_skipped_fraction: float = field(default=0.25, metadata=_rng(0.0, 1.0))


@dataclass(frozen=True)
class ViewConfig:
    endpoint: str = "tcp://127.0.0.1:5556"
    history: int = field(default=120, metadata=_rng(2, 100_000))
    stale_s: float = field(default=3.0, metadata=_rng(0.1, 3600.0))
    refresh_hz: float = field(default=8.0, metadata=_rng(0.2, 60.0))
    track_rows: int = field(default=12, metadata=_rng(0, 1000))
    track_timeout_frames: int = field(default=25, metadata=_rng(1, 1_000_000))
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata=_rng(0, 65535))
    allowed_hosts: str = ""
    curve_server_key: str = ""
    curve_secret_key: str = ""
    alarms: AlarmConfig = field(default_factory=AlarmConfig)


def _defaults() -> dict[str, Any]:
    return tomllib.loads(resources.files(__package__).joinpath("defaults.toml").read_text())


def _check(key: str, f: dataclasses.Field, value: Any) -> Any:
    kind = {"str": str, "int": int, "float": float}[str(f.type)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ViewConfigError(f"view.{key} must be a {kind.__name__}, got {value!r}")
    lo, hi = f.metadata.get("range", (None, None))
    if lo is not None and not lo <= value <= hi:
        raise ViewConfigError(f"view.{key} must lie in [{lo}, {hi}], got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields or name == "alarms":
            known = ", ".join(n for n in fields if n != "alarms")
            raise ViewConfigError(f"unknown config key 'view.{prefix}{name}' (known: {known})")
        kwargs[name] = _check(prefix + name, fields[name], value)
    return cls(**kwargs)


def load_view_config(
    path: str | Path | None = None, *, overrides: dict[str, Any] | None = None
) -> ViewConfig:
    """Defaults, then ``[view]`` of the TOML file at ``path``, then ``overrides``.

    ``overrides`` maps ``"key"`` or ``"alarms.key"`` to a value; ``None`` values are ignored
    (unset command-line flags).
    """
    tree = _defaults()["view"]
    alarms = dict(tree.pop("alarms", {}))
    view = dict(tree)
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ViewConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ViewConfigError(f"{p}: not valid TOML: {e}") from None
        publish = data.get("publish", {})
        if isinstance(publish, dict) and isinstance(publish.get("endpoint"), str):
            view["endpoint"] = publish["endpoint"]
        user = dict(data.get("view", {}))
        alarms.update(user.pop("alarms", {}))
        view.update(user)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("alarms."):
            alarms[key.removeprefix("alarms.")] = value
        else:
            view[key] = value
    cfg = _build(ViewConfig, view, "")
    bad = [h for h in allowed_host_names(cfg.allowed_hosts) if not _HOST_NAME.fullmatch(h)]
    if bad:
        raise ViewConfigError(f"view.allowed_hosts must be host names or addresses separated "
                              f"by commas, got {bad[0]!r}")  # fmt: skip
    if cfg.curve_secret_key and not cfg.curve_server_key:
        raise ViewConfigError("view.curve_secret_key needs view.curve_server_key (the daemon's "
                              "public key), got none")  # fmt: skip
    for key in ("curve_server_key", "curve_secret_key"):
        if getattr(cfg, key):
            from ..daemon.curve import load_curve_key

            try:
                load_curve_key(getattr(cfg, key), secret=key == "curve_secret_key")
            except (ValueError, OSError) as e:
                raise ViewConfigError(f"view.{key}: {e}") from None
    if "://" not in cfg.endpoint:
        raise ViewConfigError(
            f"view.endpoint must be a ZeroMQ URL like tcp://127.0.0.1:5556, got {cfg.endpoint!r}"
        )
    return dataclasses.replace(cfg, alarms=_build(AlarmConfig, alarms, "alarms."))
