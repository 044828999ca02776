"""The reproducibility manifest of a session: what ran, on what, built from what, so a run can be redone.

`build(results, ...)` gathers, once per session, the facts the Results carry in their provenance (firmware
version and build hash, kernels, CPU clock, model sha256, beat-set fingerprint, reference interpreter) and
the facts of this machine (harness version and git commit with a dirty flag, Python and key package
versions, host). For a real board it adds the ESP-IDF version and the sdkconfig hash of the build
directory, but only when that directory's build hash is the one the board reported in HELLO: a build
directory that is not what the board runs says nothing about it. It is written as results.json's
"manifest" and shown on the HTML report. Unknown facts are None, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..bench.results import Result

REPO = Path(__file__).resolve().parent.parent.parent
MANIFEST_SCHEMA = 1
# The packages whose version can change a figure or the bytes on the link.
PACKAGES = ("numpy", "tflite-runtime", "ai-edge-litert", "tflite-micro", "wfdb", "pyserial", "esptool",
            "junitparser", "pytest", "matplotlib")
BUILD_STAMP = "hil-stamp.json"  # harness/boards/build.py writes it next to flasher_args.json
VIRTUAL_IDF = "not used: the virtual board runs firmware/core built with the host C compiler"


def build(results: Sequence[Result], *, build_dirs: Mapping[str, str | Path | None] | None = None,
          repo: str | Path = REPO) -> dict:
    """The session's manifest. `build_dirs`: device → the firmware build directory used for it, if any."""
    build_dirs = build_dirs or {}
    boards: dict[str, dict] = {}
    models: dict[str, dict] = {}
    references: dict[str, dict] = {}
    beat_sets: dict[str, dict] = {}
    records: list[str] = []
    data_dirs: list[str] = []
    for result in results:
        prov = result.provenance or {}
        if result.device not in boards:
            boards[result.device] = _board(result, build_dirs.get(result.device))
        if result.model not in models:
            models[result.model] = {"sha256": prov.get("model_sha256"), "path": prov.get("model_path"),
                                    "bytes": (result.memory or {}).get("model_bytes")}
        for ref in (prov.get("reference"), prov.get("cross_reference")):
            if isinstance(ref, dict) and ref.get("name") and ref["name"] not in references:
                references[ref["name"]] = {"version": ref.get("version"), "kernels": ref.get("kernels")}
        beat_set = prov.get("beat_set")
        if isinstance(beat_set, dict):
            beat_sets[result.name] = {key: beat_set.get(key) for key in ("fingerprint", "beats", "records", "version")
                                      if key in beat_set}
        for name in prov.get("records") or ():
            if str(name) not in records:
                records.append(str(name))
        if prov.get("data_dir") and prov["data_dir"] not in data_dirs:
            data_dirs.append(prov["data_dir"])
    return {
        "schema": MANIFEST_SCHEMA,
        "harness": {"version": __version__, **git_state(repo)},
        "boards": list(boards.values()),
        "models": models,
        "beat_sets": beat_sets,
        "references": references,
        "data": {"records": records, "dirs": data_dirs},
        "python": platform.python_version(),
        "packages": package_versions(),
        "host": {"name": platform.node(), "system": platform.platform(), "machine": platform.machine()},
    }


def git_state(repo: str | Path = REPO) -> dict:
    """{"git_commit", "git_dirty"}: HEAD of the checkout and whether tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    # Tracked files only: out/, build/ and .venv are untracked by design and do not change the code that ran.
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of `names`; packages that are not installed are left out."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _board(result: Result, build_dir: str | Path | None) -> dict:
    prov = result.provenance or {}
    fw = prov.get("firmware") or {}
    board = {
        "device": result.device, "profile": result.profile, "chip": fw.get("chip"),
        "firmware_version": fw.get("version"), "build_hash": fw.get("build_hash"),
        "kernels": fw.get("kernel_mode"), "cpu_mhz": fw.get("cpu_mhz"),
        "protocol": prov.get("protocol"), "identity": prov.get("board"),
    }
    if fw.get("chip") == "virtual":
        board.update(esp_idf=VIRTUAL_IDF, sdkconfig_sha256=None, build_dir=None)
    else:
        board.update(build_facts(build_dir, fw.get("build_hash")))
    return board


def build_facts(build_dir: str | Path | None, running_hash: str | None) -> dict:
    """ESP-IDF version and sdkconfig sha256 of `build_dir`, if it holds the build the board runs.

    Returns {"esp_idf", "sdkconfig_sha256", "build_dir"}; values are None with a "build_note" saying why
    when there is no such directory or its build hash differs from `running_hash`.
    """
    unknown = {"esp_idf": None, "sdkconfig_sha256": None, "build_dir": None}
    if build_dir is None:
        return {**unknown, "build_note": "no firmware build directory in this session (--skip-flash?)"}
    build_dir = Path(build_dir)
    stamp = _read_json(build_dir / BUILD_STAMP)
    description = _read_json(build_dir / "project_description.json")
    built_hash = stamp.get("build_hash")
    if running_hash and built_hash and built_hash != running_hash:
        return {**unknown, "build_note": f"{build_dir} holds build {built_hash}, the board runs {running_hash}"}
    config = Path(description.get("config_file") or build_dir / "sdkconfig")
    try:
        sdkconfig = hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError:
        sdkconfig = None
    facts = {"esp_idf": stamp.get("idf_version") or description.get("git_revision"),
             "sdkconfig_sha256": sdkconfig, "build_dir": str(build_dir)}
    if not built_hash or not running_hash:
        facts["build_note"] = "build hash not recorded on both sides: the directory may not be what the board runs"
    return facts


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
