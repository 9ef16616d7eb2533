"""The wheel (``make dist``) installs into a fresh virtual environment offline and runs.

The wheel is built from a copy of the source (so nothing is written into the checkout) with
the test venv's setuptools (``--no-build-isolation``: no download), then installed with
``--no-deps --no-index`` into a venv made with ``--without-pip``. That venv gets the test
venv's dependencies through a ``.pth`` line that comes *after* its own site-packages: loopline
itself is the wheel's (asserted: ``loopline.__file__`` lies in the fresh venv), never the
editable checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]

# package data the daemon, the viewers, napari and training need at run time
PACKAGE_DATA = (
    "loopline/models/defects.onnx", "loopline/models/defects.pt",
    "loopline/daemon/defaults.toml", "loopline/synth/defaults.toml",
    "loopline/viewers/page.html", "loopline/napari.yaml",
    "loopline/training/yolov8-seg-p2.yaml", "loopline/data/demo_scene.json",
)  # fmt: skip


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, **kw)
    assert r.returncode == 0, (f"{cmd}: rc {r.returncode}\n{r.stdout[-2000:]}\n"
                               f"{r.stderr[-3000:]}")  # fmt: skip
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "loopline", src / "loopline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(out), str(src)])  # fmt: skip
    (whl,) = out.glob("loopline-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_holds_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, missing
    assert not any(n.startswith(("tests/", "loopline/tests")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Provides-Extra: daemon" in text and "Provides-Extra: int8" in text
    # the microscope PC's set (daemon + openvino) pulls neither nncf nor an EPICS stack
    for req in [ln for ln in text.splitlines() if ln.startswith("Requires-Dist:")]:
        if "extra ==" in req and any(f'extra == "{x}"' in req for x in ("daemon", "openvino")):
            assert not any(bad in req for bad in ("nncf", "tickit", "epics", "softioc")), req


@pytest.mark.slow
def test_wheel_installs_offline_into_a_fresh_venv_and_serve_help_runs(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
          "--no-index", str(wheel)])  # fmt: skip
    own = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                    ).stdout.strip())  # fmt: skip
    # the dependencies: the test venv's site-packages, after the fresh venv's own
    (own / "zz_test_venv_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = _run([str(py), "-c", "import loopline; print(loopline.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    exe = env_dir / "bin" / "loopline"
    r = _run([str(exe), "--help"], cwd=tmp_path)
    assert "serve" in r.stdout and "analyze" in r.stdout
    r = _run([str(exe), "serve", "--help"], cwd=tmp_path)
    assert "--endpoint" in r.stdout and "arm" in r.stdout


# --------------------------------------------------------------- extras: one line each


def test_export_int8_without_nncf_names_the_extra_in_one_line(monkeypatch, capsys):
    pytest.importorskip("openvino")
    from loopline.cli import main

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    rc = main(["export", "--model", "defects", "--format", "openvino", "--int8"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    assert "nncf" in err and "loopline[int8]" in err


def test_dm_input_without_rosettasciio_names_the_extra_in_one_line(monkeypatch, tmp_path):
    from loopline.io import frames

    monkeypatch.setitem(sys.modules, "rsciio", None)
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)
    with pytest.raises(ImportError) as info:
        frames._dm_signal(tmp_path / "x.dm4")
    assert "\n" not in str(info.value) and "loopline[hyperspy]" in str(info.value)


def test_run_tables_without_pyarrow_write_csv_and_say_so(monkeypatch, tmp_path, caplog):
    from loopline.io.runfolder import RunTables

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # find_spec -> None: not installed
    with caplog.at_level("WARNING"):
        t = RunTables(tmp_path, parquet="series.parquet")
        t.close()
    assert not (tmp_path / "series.parquet").exists()
    assert any("loopline[parquet]" in r.getMessage() for r in caplog.records)
