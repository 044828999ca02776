"""Build the ESP-IDF firmware in `firmware/` with idf.py, once per source change, for the real-board path.

`ensure_build(target, firmware_dir=...)` returns a `Build`: an ESP-IDF build directory with its
`flasher_args.json` (what to write where, and with which flash settings) and the build hash. The build hash
is a digest of the firmware sources, the target and the ESP-IDF version; it is passed to CMake as
`-DHIL_BUILD_HASH=<hash>` and the firmware reports it in HELLO, so the host skips flashing a board that
already runs this very build (`harness.boards.flash.needs_flash`).

Cache: builds go to `<build_root>/<target>` (one directory per target, so switching targets never wipes
another target's build). A stamp file there records the hash of the last successful build; the same hash with
`flasher_args.json` present means no rebuild; the full idf.py output of the last build is in
`<build_root>/<target>/hil-build.log`. Builds of one target are serialised with a lock file, so parallel
pytest workers build once. A prebuilt directory (`--build-dir`) is used as is, after checking it is an
ESP-IDF build for the right target; its build hash is read from our stamp or from `HIL_BUILD_HASH` in its
CMakeCache.txt, else it is unknown and the board is always flashed.

How idf.py is driven (ESP-IDF v5.x CLI: global options `-C`, `-B`, `-D` come before the actions):

    idf.py -C firmware -B build/esp32s3 -DSDKCONFIG=build/esp32s3/sdkconfig -DHIL_BUILD_HASH=<hash>
           -DHIL_FW_VERSION=<version> -DIDF_TARGET=esp32s3 build

- `sdkconfig` lives in the build directory (`-DSDKCONFIG`), not in `firmware/`: the project's sdkconfig is
  tied to one target, and sharing it between `build/esp32` and `build/esp32s3` would make every target
  switch fail with "target in sdkconfig differs". `sdkconfig.defaults*` in `firmware/` still apply.
- `-DIDF_TARGET` selects the target of a fresh build directory without `set-target`, which would first run
  `fullclean`. `set-target <target>` is added only when the build directory was configured for another
  target (its `project_description.json` says so); then wiping it is exactly what is needed.
- `IDF_TARGET` is also set in idf.py's environment, because idf.py refuses to run when a stale
  `IDF_TARGET` exported in the user's shell disagrees with the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: builds of one target are not serialised across processes
    fcntl = None  # type: ignore[assignment]

from .. import __version__
from ..errors import BuildError

HASH_CHARS = 16
STAMP_FILE = "hil-stamp.json"
LOG_FILE = "hil-build.log"

# Files that change what the firmware does. Generated trees inside the project (build directories, the
# component manager's downloads) are skipped: they appear after the first build and would change the hash.
SOURCE_SUFFIXES = frozenset({".c", ".cc", ".h", ".cpp", ".txt", ".yml", ".csv", ".def", ".projbuild"})
_SKIP_DIRS = ("managed_components", "__pycache__")

IDF_MISSING = ("idf.py not found: install ESP-IDF v5.x "
               "(https://docs.espressif.com/projects/esp-idf/en/stable/esp32/get-started/) and run "
               "`. $IDF_PATH/export.sh`, or pass --build-dir with a prebuilt firmware")


@dataclass(frozen=True)
class Build:
    """A firmware build directory ready to flash."""

    dir: Path
    target: str
    build_hash: str | None          # None: a prebuilt directory that does not say which sources it holds
    flasher_args: dict[str, Any] = field(repr=False)
    app_bin: Path
    idf_version: str | None = None  # None for a prebuilt directory
    prebuilt: bool = False

    def flash_files(self) -> list[tuple[int, Path]]:
        """(offset, file) pairs of `flasher_args.json["flash_files"]`, by offset."""
        files = self.flasher_args.get("flash_files", {})
        return sorted((int(offset, 0), self.dir / name) for offset, name in files.items())

    @property
    def flash_settings(self) -> dict[str, str]:
        """flash_mode, flash_freq and flash_size as the build configured them ("keep" when unknown)."""
        settings = self.flasher_args.get("flash_settings", {})
        return {key: str(settings.get(key, "keep")) for key in ("flash_mode", "flash_freq", "flash_size")}


# Hash -----------------------------------------------------------------------------------------------
def _is_source(path: Path) -> bool:
    return path.suffix in SOURCE_SUFFIXES or path.name.startswith("sdkconfig.defaults")


def _skipped_dir(name: str) -> bool:
    return name.startswith(".") or name.startswith("build") or name in _SKIP_DIRS


def firmware_sources(firmware_dir: str | Path) -> list[Path]:
    """The files whose content defines the firmware, as paths relative to `firmware_dir`, sorted."""
    root = Path(firmware_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skipped_dir(d)]
        for name in filenames:
            path = Path(dirpath, name)
            if _is_source(path):
                found.append(path.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


# Kernel builds (`--kernels both`): the profile's default is ESP-NN's optimized kernels (sdkconfig.defaults);
# "reference" adds this overlay, ESP-NN's reference-equivalent ANSI C kernels.
KERNEL_OVERLAYS = {"esp-nn": None, "reference": "sdkconfig.defaults.kernels-reference"}


def build_dir_name(target: str, kernels: str | None) -> str:
    """build/<target> for the default build, build/<target>-reference for the reference-kernels one."""
    return target if KERNEL_OVERLAYS.get(kernels or "esp-nn") is None else f"{target}-{kernels}"


def firmware_hash(firmware_dir: str | Path, target: str, idf_version: str, kernels: str | None = None) -> str:
    """sha256 over the firmware sources (sorted paths + contents), the target, the IDF version and, for a
    non-default kernels build, its name; 16 hex."""
    root = Path(firmware_dir)
    if not root.is_dir():
        raise BuildError(f"firmware directory {root} does not exist",
                         "run from the repository root or pass the path of firmware/", code="HIL703")
    digest = hashlib.sha256()
    for rel in firmware_sources(root):
        content = (root / rel).read_bytes()
        # Length prefixes keep (path, content) boundaries unambiguous.
        for part in (rel.as_posix().encode(), content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    parts = [target.encode(), idf_version.encode()]
    if KERNEL_OVERLAYS.get(kernels or "esp-nn") is not None:
        parts.append(f"kernels={kernels}".encode())  # the default build keeps the hash it always had
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:HASH_CHARS]


# idf.py ---------------------------------------------------------------------------------------------
def find_idf_py() -> str | None:
    """idf.py on PATH (after `. export.sh`), else `$IDF_PATH/tools/idf.py`, else None."""
    on_path = shutil.which("idf.py")
    if on_path:
        return on_path
    idf_path = os.environ.get("IDF_PATH")
    if idf_path:
        candidate = Path(idf_path) / "tools" / "idf.py"
        if candidate.is_file():
            return str(candidate)
    return None


def idf_version(idf_py: str) -> str:
    """The ESP-IDF version idf.py reports (`idf.py --version` prints e.g. "ESP-IDF v5.2.1")."""
    try:
        proc = subprocess.run([idf_py, "--version"], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise BuildError(f"idf.py at {idf_py} cannot be run ({exc.strerror or exc})",
                         "run `. $IDF_PATH/export.sh` in this shell first", code="HIL701") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"`{idf_py} --version` did not answer within 120 s",
                         "check the ESP-IDF installation (`. $IDF_PATH/export.sh`)", code="HIL701") from None
    output = (proc.stdout + proc.stderr).strip()
    match = re.search(r"\bv\d+\.\d+(?:\.\d+)?[\w.+-]*", output)
    if proc.returncode != 0 or not match:
        last = output.splitlines()[-1] if output else f"exit status {proc.returncode}"
        raise BuildError(f"`{idf_py} --version` failed: {last}",
                         "run `. $IDF_PATH/export.sh` in this shell so idf.py finds its Python environment",
                         code="HIL701")
    return match.group(0)


def build_command(idf_py: str, firmware_dir: str | Path, build_dir: str | Path, target: str,
                  build_hash: str, fw_version: str, *, set_target: bool = False,
                  kernels: str | None = None) -> list[str]:
    """The idf.py command line; `set_target` only when the build dir was configured for another target.

    A non-default `kernels` build lists its overlay after sdkconfig.defaults in SDKCONFIG_DEFAULTS; ESP-IDF
    still applies sdkconfig.defaults.<target> right after sdkconfig.defaults, as in the default build.
    """
    build_dir = Path(build_dir)
    command = [
        str(idf_py),
        "-C", str(firmware_dir),
        "-B", str(build_dir),
        f"-DSDKCONFIG={build_dir / 'sdkconfig'}",
        f"-DHIL_BUILD_HASH={build_hash}",
        f"-DHIL_FW_VERSION={fw_version}",
        f"-DIDF_TARGET={target}",
    ]
    overlay = KERNEL_OVERLAYS.get(kernels or "esp-nn")
    if overlay is not None:
        root = Path(firmware_dir)
        command.append(f"-DSDKCONFIG_DEFAULTS={root / 'sdkconfig.defaults'};{root / overlay}")
    if set_target:
        command += ["set-target", target]
    command.append("build")
    return command


# Reading build directories -------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def configured_target(build_dir: str | Path) -> str | None:
    """The target a build directory was configured for (project_description.json, else flasher_args.json)."""
    build_dir = Path(build_dir)
    description = _read_json(build_dir / "project_description.json") or {}
    if isinstance(description.get("target"), str):
        return description["target"]
    flasher_args = _read_json(build_dir / "flasher_args.json") or {}
    chip = (flasher_args.get("extra_esptool_args") or {}).get("chip")
    return chip if isinstance(chip, str) else None


def _recorded_hash(build_dir: Path) -> str | None:
    """The HIL_BUILD_HASH a directory was built with: our stamp, else the -D entry in CMakeCache.txt."""
    stamp = _read_json(build_dir / STAMP_FILE) or {}
    if isinstance(stamp.get("build_hash"), str):
        return stamp["build_hash"]
    try:
        cache = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^HIL_BUILD_HASH(?::\w+)?=(\w+)\s*$", cache, re.MULTILINE)
    return match.group(1) if match else None


def load_build_dir(build_dir: str | Path, target: str, *, build_hash: str | None = None,
                   idf_version: str | None = None, prebuilt: bool = True) -> Build:
    """Check that `build_dir` is an ESP-IDF build for `target` with every file to flash, and describe it."""
    build_dir = Path(build_dir)
    flasher_path = build_dir / "flasher_args.json"
    if not flasher_path.is_file():
        raise BuildError(f"build directory {build_dir} has no flasher_args.json",
                         "point --build-dir at an ESP-IDF build directory made by `idf.py build`",
                         code="HIL703")
    flasher_args = _read_json(flasher_path)
    if flasher_args is None or not isinstance(flasher_args.get("flash_files"), dict):
        raise BuildError(f"{flasher_path} is not a valid flasher_args.json (no flash_files)",
                         "rebuild the firmware with `idf.py build`", code="HIL703")
    built_for = configured_target(build_dir)
    if built_for is not None and built_for != target:
        raise BuildError(f"build directory {build_dir} holds a firmware for {built_for}, the profile says {target}",
                         f"use --target {built_for}, or build the firmware for {target}", code="HIL704")
    for offset in flasher_args["flash_files"]:
        try:
            int(offset, 0)
        except (TypeError, ValueError):
            raise BuildError(f"{flasher_path}: flash_files offset {offset!r} is not a number like \"0x10000\"",
                             "rebuild the firmware with `idf.py build`", code="HIL703") from None
    missing = [name for name in flasher_args["flash_files"].values() if not (build_dir / name).is_file()]
    if missing:
        raise BuildError(f"build directory {build_dir} lacks {missing[0]} listed in flasher_args.json",
                         "rebuild the firmware with `idf.py build`", code="HIL703")
    app = (flasher_args.get("app") or {}).get("file")
    if not app:
        app = (_read_json(build_dir / "project_description.json") or {}).get("app_bin", "")
    app_bin = build_dir / app if app else build_dir
    if build_hash is None:
        build_hash = _recorded_hash(build_dir)
    return Build(dir=build_dir, target=target, build_hash=build_hash, flasher_args=flasher_args,
                 app_bin=app_bin, idf_version=idf_version, prebuilt=prebuilt)


# Running the build ----------------------------------------------------------------------------------
# Lines that close a failed build without saying what failed.
_NOISE = re.compile(
    r"^(ninja: build stopped|ninja failed with exit code|cmake failed with exit code|FAILED:|HINT:"
    r"|-- Configuring incomplete|Call Stack|See also|make(\[\d+\])?: \*\*\*)", re.IGNORECASE)
_ERROR = re.compile(r"(\berror\b|\bError:|fatal)", re.IGNORECASE)


def last_error_line(output: str) -> str:
    """The last line of an idf.py run that names an error, with the message of a "CMake Error at" header."""
    lines = [line.strip() for line in output.splitlines()]
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line or _NOISE.match(line) or not _ERROR.search(line):
            continue
        if line.startswith("CMake Error") and line.endswith(":"):
            detail = next((nxt for nxt in lines[index + 1:] if nxt), "")
            return f"{line} {detail}".strip()
        return line
    meaningful = [line for line in lines if line and not _NOISE.match(line)]
    return meaningful[-1] if meaningful else "idf.py printed nothing"


def _write_stamp(build_dir: Path, stamp: dict[str, str]) -> None:
    tmp = build_dir / (STAMP_FILE + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(build_dir / STAMP_FILE)


@contextlib.contextmanager
def _build_lock(build_root: Path, target: str) -> Iterator[None]:
    """Serialise builds of one target: pytest-xdist workers with two boards of a chip share build/<target>."""
    build_root.mkdir(parents=True, exist_ok=True)
    with open(build_root / f".{target}.lock", "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _run_idf_py(idf_py: str, command: list[str], target: str, out_dir: Path) -> str:
    """Run idf.py, write its whole output to the build log, raise HIL702 with the error line on failure."""
    log_path = out_dir / LOG_FILE
    env = dict(os.environ, IDF_TARGET=target)
    try:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              text=True, errors="replace")
    except OSError as exc:
        raise BuildError(f"idf.py at {idf_py} cannot be run ({exc.strerror or exc})",
                         "run `. $IDF_PATH/export.sh` in this shell first", code="HIL701") from None
    # Written after the run: `set-target` wipes the build directory while it runs.
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {' '.join(command)}\n{proc.stdout}\n[exit status {proc.returncode}]\n")
    if proc.returncode != 0:
        raise BuildError(f"idf.py build for {target} failed: {last_error_line(proc.stdout)} (full log: {log_path})",
                         "fix the firmware error; the full idf.py output is in the log", code="HIL702")
    if not (out_dir / "flasher_args.json").is_file():
        raise BuildError(f"idf.py build for {target} succeeded but wrote no flasher_args.json in {out_dir} "
                         f"(full log: {log_path})", "check that firmware/ is an ESP-IDF project", code="HIL702")
    return proc.stdout


def ensure_build(target: str, *, firmware_dir: str | Path, build_root: str | Path = "build",
                 build_dir: str | Path | None = None, idf_py: str | None = None,
                 fw_version: str = __version__, log: Callable[[str], None] | None = print,
                 kernels: str | None = None) -> Build:
    """A firmware build for `target`: the prebuilt `build_dir` as is, or a cached or fresh idf.py build.

    Relative `build_root` and `firmware_dir` are taken from the current directory.
    """
    say = log or (lambda _line: None)
    if build_dir is not None:
        build = load_build_dir(build_dir, target, prebuilt=True)
        say(f"firmware: using prebuilt {build.dir} for {target} (build hash {build.build_hash or 'unknown'})")
        return build

    idf_py = idf_py or find_idf_py()
    if idf_py is None:
        raise BuildError(IDF_MISSING, code="HIL701")
    version = idf_version(idf_py)
    firmware_dir = Path(firmware_dir).resolve()
    if kernels is not None and kernels not in KERNEL_OVERLAYS:
        raise BuildError(f"no firmware build for kernels '{kernels}'", f"use one of {', '.join(KERNEL_OVERLAYS)}",
                         code="HIL703")
    build_hash = firmware_hash(firmware_dir, target, version, kernels)
    # Absolute paths: idf.py runs with -C firmware/, and CMake would read relative -D paths from elsewhere.
    build_root = Path(build_root).resolve()
    out_dir = build_root / build_dir_name(target, kernels)

    with _build_lock(build_root, out_dir.name):
        stamp = _read_json(out_dir / STAMP_FILE) or {}
        if stamp.get("build_hash") == build_hash and (out_dir / "flasher_args.json").is_file():
            say(f"firmware: {target} build {build_hash} is up to date in {out_dir}")
            return load_build_dir(out_dir, target, build_hash=build_hash, idf_version=version, prebuilt=False)

        existing = configured_target(out_dir)
        command = build_command(idf_py, firmware_dir, out_dir, target, build_hash, fw_version,
                                set_target=existing is not None and existing != target, kernels=kernels)
        out_dir.mkdir(parents=True, exist_ok=True)
        # A build that fails half way leaves a mix of old and new files: the old stamp must not vouch for them.
        (out_dir / STAMP_FILE).unlink(missing_ok=True)
        say(f"firmware: building {target} (hash {build_hash}, ESP-IDF {version}); log: {out_dir / LOG_FILE}")
        started = time.monotonic()
        _run_idf_py(idf_py, command, target, out_dir)
        build = load_build_dir(out_dir, target, build_hash=build_hash, idf_version=version, prebuilt=False)
        _write_stamp(out_dir, {"build_hash": build_hash, "target": target, "idf_version": version,
                               "fw_version": fw_version, "kernels": kernels or "esp-nn"})
    say(f"firmware: built {target} {build_hash} in {time.monotonic() - started:.0f} s (host wall time)")
    return build
