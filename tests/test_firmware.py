"""Checks of the ESP-IDF firmware (firmware/) that run without a board.

- the whole app (main/*.cc|*.c and core/*.c) compiles with no error and no warning against the real
  ESP-IDF (v5.5.5 and v5.1.7) and esp-tflite-micro headers for esp32, esp32s3 and esp32c3, with the
  sdkconfig.h Espressif's kconfgen makes from sdkconfig.defaults*, every CONFIG_ line of the defaults
  exists, and partitions*.csv pass gen_esp32part.py: `../shared/esp-idf-kit/check.sh -i all` (its README
  says what that does and does not show);
- the portable core compiles as strict C99 with the host compiler;
- the model store (firmware/main/model_store.c) runs on the host over a fake NOR flash partition: an
  upload cut short is never taken as committed, and a new upload erases whole sectors before writing;
- the partition tables, sdkconfig.defaults.<target>, Kconfig.projbuild and idf_component.yml agree with
  device_profiles/*.yaml;
- with ESP-IDF installed (idf.py on PATH), the app really builds for each target.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.boards.profiles import available, load_profile

ROOT = Path(__file__).resolve().parent.parent
FW = ROOT / "firmware"
MAIN = FW / "main"
CORE = FW / "core"
STUBS = ROOT / "tests" / "stubs" / "esp_idf"
RESOLVER_DEF = FW / "resolver_ops.def"
# CI lays the shared kit out beside the clone (../shared); HIL_ESP_IDF_KIT points elsewhere (a worktree).
KIT = Path(os.environ.get("HIL_ESP_IDF_KIT") or ROOT.parent / "shared" / "esp-idf-kit")
KIT_OUT = ROOT / "build" / "esp-idf-kit"

TARGETS = ("esp32", "esp32s3", "esp32c3")
FLASH_4MB = 4 * 1024 * 1024
SECTOR = 4096

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="needs a host C compiler (cc)")
needs_idf = pytest.mark.skipif(shutil.which("idf.py") is None,
                               reason="needs ESP-IDF (idf.py), not installed on this machine")


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ---- (1) the whole app against the real ESP-IDF headers (../shared/esp-idf-kit) ---------------------

@pytest.fixture(scope="module")
def kit_run() -> tuple[subprocess.CompletedProcess, Path]:
    """One `check.sh -i all` over firmware/ (about a minute on 2 cores); logs kept in build/esp-idf-kit."""
    check = KIT / "check.sh"
    if not check.is_file():
        pytest.skip(f"needs the ESP-IDF compile-check kit at {KIT} (../shared/esp-idf-kit beside the clone, or "
                    "set HIL_ESP_IDF_KIT): not present on this machine")
    shutil.rmtree(KIT_OUT, ignore_errors=True)
    proc = subprocess.run(["bash", str(check), "-i", "all", "-o", str(KIT_OUT), str(FW)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 2 and "setup-deps.sh" in proc.stderr:
        # check.sh names the missing Debian packages (cross compilers, newlib headers).
        pytest.skip(f"the ESP-IDF kit's Debian packages are missing ({proc.stderr.strip()[-200:]}): "
                    f"run {KIT / 'setup-deps.sh'} as root (.ci/run does)")
    return proc, KIT_OUT


def test_firmware_compiles_clean_against_the_esp_idf_kit(kit_run):
    proc, out = kit_run
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"esp-idf-kit check failed (logs in {out}):\n{text[-6000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"^esp32\w* v\d", ln)]
    combos = {tuple(ln.split(":")[0].split()) for ln in lines}
    assert combos == {(t, v) for t in TARGETS for v in ("v5.5.5", "v5.1.7")}, proc.stdout
    # The kit counts warnings ESP-IDF does not make errors without failing; the bench allows none.
    noisy = [ln for ln in lines if "compiled clean" not in ln]
    assert not noisy, "warnings or failures:\n" + "\n".join(noisy) + f"\n(logs in {out})"
    compiled = {int(m.group(1)) for m in (re.search(r"(\d+) sources compiled", ln) for ln in lines) if m}
    expected = len([*MAIN.glob("*.c"), *MAIN.glob("*.cc"), *CORE.glob("*.c")])
    assert compiled == {expected}, f"kit compiled {compiled} sources per target, firmware has {expected}"


def test_kit_check_fails_on_a_stale_resolver_count(kit_run, tmp_path):
    # The check is only worth something if an error in the app fails it: inference.cc counts the HIL_OP
    # lines itself, so a def file whose HIL_OP_COUNT is stale must not compile. Rerun the kit's own
    # command line for inference.cc (esp32, v5.5.5) with such a def file found first.
    proc, out = kit_run
    cmd_file = out / "v5.5.5" / "esp32" / "main_inference.cc.cmd"
    assert proc.returncode == 0 and cmd_file.is_file(), f"no kit command line at {cmd_file}"
    entries = _resolver_entries()
    stale = tmp_path / "resolver_ops.def"
    stale.write_text(RESOLVER_DEF.read_text().replace(f"#define HIL_OP_COUNT {len(entries)}",
                                                       f"#define HIL_OP_COUNT {len(entries) + 1}"))
    assert stale.read_text() != RESOLVER_DEF.read_text(), "HIL_OP_COUNT line not found in resolver_ops.def"
    command = cmd_file.read_text()
    token = f"-I{FW} "
    assert token in command, f"{cmd_file} does not put {FW} on the include path"
    command = command.replace(token, f"-I{tmp_path} {token}", 1)
    command = re.sub(r"-MD -MF \S+", f"-MD -MF {tmp_path / 'inference.d'}", command)  # the kit's logs stay as they are
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    # The failure is inference.cc's own static_assert, not a broken command line.
    assert "resolver_ops.def: HIL_OP_COUNT differs from the number of HIL_OP lines" in result.stderr, result.stderr[-2000:]


def test_reference_kernels_build_compiles_clean_against_the_esp_idf_kit(kit_run, tmp_path):
    # --kernels both flashes a second build with sdkconfig.defaults.kernels-reference after the defaults
    # (harness/boards/build.py). The kit applies only sdkconfig.defaults[.<target>], so it checks a copy of the
    # firmware whose sdkconfig.defaults ends with the overlay: one target and version are enough, the
    # overlay changes only ESP-NN's kernel choice (and kernel_mode in HELLO).
    copy = tmp_path / "firmware"
    shutil.copytree(FW, copy, ignore=shutil.ignore_patterns("build*", "managed_components"))
    overlay = (FW / "sdkconfig.defaults.kernels-reference").read_text()
    with open(copy / "sdkconfig.defaults", "a") as defaults:
        defaults.write("\n" + overlay)
    out = tmp_path / "kit"
    proc = subprocess.run(["bash", str(KIT / "check.sh"), "-i", "v5.5.5", "-t", "esp32s3", "-o", str(out), str(copy)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled clean" in proc.stdout, proc.stdout
    config = (out / "v5.5.5" / "esp32s3" / "config" / "sdkconfig.h").read_text()
    assert "#define CONFIG_NN_ANSI_C 1" in config and "CONFIG_NN_OPTIMIZED" not in config


# ---- (2) the portable core is strict C99 ----------------------------------------------------------------

@needs_cc
def test_core_sources_compile_as_strict_c99(tmp_path):
    sources = sorted(CORE.glob("*.c"))
    assert sources, "firmware/core has no .c files"
    for source in sources:
        result = _run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{CORE}", "-c", str(source),
                       "-o", str(tmp_path / (source.stem + ".o"))])
        assert result.returncode == 0, f"{source.name}:\n{result.stderr}"


def test_component_cmakelists_names_every_core_source():
    cmake = (MAIN / "CMakeLists.txt").read_text()
    named = set(re.findall(r"\$\{hil_core_dir\}/([A-Za-z0-9_]+\.c)", cmake))
    present = {p.name for p in CORE.glob("*.c")}
    assert named == present, (f"firmware/main/CMakeLists.txt names {sorted(named)} but firmware/core has "
                              f"{sorted(present)}: update hil_core_srcs")


def _resolver_entries() -> list[tuple[str, str]]:
    text = RESOLVER_DEF.read_text()
    return re.findall(r"^\s*HIL_OP\(\s*([A-Z0-9_]+)\s*,\s*([A-Za-z0-9_]+)\s*\)", text, flags=re.M)


# ---- model store on a fake NOR flash -------------------------------------------------------------------

FAKE_FLASH_C = r"""
/* Fake `model` partition for the host test: NOR semantics (erase sets 0xFF in whole sectors, a write can
 * only clear bits), so a write over bytes that were not erased shows up as corrupted data. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "esp_partition.h"
#include "esp_heap_caps.h"
#include "esp_log.h"

uint8_t fake_flash[FAKE_SIZE];
int fake_present = 1;
int fake_maps = 0;
static esp_partition_t part = { NULL, ESP_PARTITION_TYPE_DATA, (esp_partition_subtype_t)0x40, 0x210000,
                                FAKE_SIZE, 4096, "model", false };

const esp_partition_t *esp_partition_find_first(esp_partition_type_t type, esp_partition_subtype_t subtype,
                                                const char *label)
{
    if (!fake_present || type != ESP_PARTITION_TYPE_DATA || (int)subtype != 0x40 || strcmp(label, "model") != 0)
        return NULL;
    return &part;
}
esp_err_t esp_partition_erase_range(const esp_partition_t *p, size_t offset, size_t size)
{
    if (p != &part || offset % 4096 || size % 4096 || offset + size > FAKE_SIZE) return ESP_ERR_INVALID_ARG;
    memset(fake_flash + offset, 0xFF, size);
    return ESP_OK;
}
esp_err_t esp_partition_write(const esp_partition_t *p, size_t offset, const void *src, size_t size)
{
    const uint8_t *s = src;
    if (p != &part || offset + size > FAKE_SIZE) return ESP_ERR_INVALID_SIZE;
    for (size_t i = 0; i < size; i++) fake_flash[offset + i] &= s[i];
    return ESP_OK;
}
esp_err_t esp_partition_read(const esp_partition_t *p, size_t offset, void *dst, size_t size)
{
    if (p != &part || offset + size > FAKE_SIZE) return ESP_ERR_INVALID_SIZE;
    memcpy(dst, fake_flash + offset, size);
    return ESP_OK;
}
esp_err_t esp_partition_mmap(const esp_partition_t *p, size_t offset, size_t size, esp_partition_mmap_memory_t m,
                             const void **out, esp_partition_mmap_handle_t *handle)
{
    if (p != &part || m != ESP_PARTITION_MMAP_DATA || offset + size > FAKE_SIZE) return ESP_ERR_INVALID_ARG;
    *out = fake_flash + offset;
    *handle = 1;
    fake_maps++;
    return ESP_OK;
}
void esp_partition_munmap(esp_partition_mmap_handle_t handle) { (void)handle; fake_maps--; }
void *heap_caps_malloc(size_t size, uint32_t caps) { (void)caps; return malloc(size); }
void heap_caps_free(void *ptr) { free(ptr); }
void esp_log_write(esp_log_level_t level, const char *tag, const char *format, ...)
{
    (void)level; (void)tag; (void)format;
}
"""


def _model_partition_size() -> int:
    return next(int(p["size"]) for p in _partitions() if p["name"] == "model")


@pytest.fixture(scope="module", params=["flash-mapped", "copied-to-ram"])
def store(request, tmp_path_factory):
    """model_store.c built for the host over the fake flash (tests/stubs/esp_idf), in both read modes."""
    if CC is None:
        pytest.skip("needs a host C compiler (cc)")
    in_ram = request.param == "copied-to-ram"
    out = tmp_path_factory.mktemp(f"store_{request.param}")
    fake = out / "fake_flash.c"
    fake.write_text(FAKE_FLASH_C)
    lib = out / "libstore.so"
    result = _run([CC, "-std=gnu99", "-shared", "-fPIC", "-O1", "-Wall", "-Werror",
                   f"-DFAKE_SIZE={_model_partition_size()}", *(["-DHIL_STUB_MODEL_IN_RAM"] if in_ram else []),
                   f"-I{STUBS}", f"-I{MAIN}", f"-I{CORE}",
                   str(MAIN / "model_store.c"), str(CORE / "hil_frame.c"), str(fake), "-o", str(lib)])
    assert result.returncode == 0, result.stderr
    so = ctypes.CDLL(str(lib))
    so.model_store_capacity.restype = ctypes.c_uint32
    so.model_store_begin.argtypes = [ctypes.c_uint32]
    so.model_store_write.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32]
    so.model_store_data.restype = ctypes.c_void_p
    so.model_store_commit.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    so.model_store_committed.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.c_char_p]
    so.in_ram = in_ram
    return so


def _upload(so, payload: bytes, chunk: int = 1000, commit: bool = True) -> None:
    assert so.model_store_begin(len(payload)) == 0
    for offset in range(0, len(payload), chunk):
        part = payload[offset:offset + chunk]
        assert so.model_store_write(offset, part, len(part)) == 0
    if commit:
        assert so.model_store_commit(len(payload), hashlib.sha256(payload).digest()) == 0


def _committed(so) -> tuple[int, bytes] | None:
    size = ctypes.c_uint32(0)
    sha = ctypes.create_string_buffer(32)
    if so.model_store_committed(ctypes.byref(size), sha) != 0:
        return None
    return size.value, sha.raw


def _data(so, n: int) -> bytes:
    ptr = so.model_store_data()
    assert ptr, "model_store_data returned NULL"
    return ctypes.string_at(ptr, n)


def _reboot(so) -> None:
    assert so.model_store_init() == 0


def test_store_capacity_leaves_one_header_sector(store):
    _reboot(store)
    assert store.model_store_capacity() == _model_partition_size() - SECTOR


def test_store_commit_survives_a_reboot(store):
    _reboot(store)
    payload = os.urandom(9000)
    _upload(store, payload)
    _reboot(store)
    assert _committed(store) == (len(payload), hashlib.sha256(payload).digest())
    assert _data(store, len(payload)) == payload
    flash = ctypes.addressof(ctypes.c_uint8.in_dll(store, "fake_flash"))
    mapped = store.model_store_data() - flash
    assert (0 <= mapped < _model_partition_size()) is not store.in_ram


def test_store_upload_cut_short_is_not_committed(store):
    _reboot(store)
    _upload(store, os.urandom(6000))
    assert _committed(store) is not None
    _upload(store, os.urandom(20000)[:12000], commit=False)  # the link drops before MODEL_END
    _reboot(store)
    assert _committed(store) is None


def test_store_new_upload_erases_whole_sectors(store):
    _reboot(store)
    _upload(store, b"\x00" * 12000)  # all bits cleared: any byte not erased again would stay 0
    payload = bytes([0xA5]) * 4097 + b"\x5A" * 3  # ends 4 bytes into a sector
    _upload(store, payload)
    _reboot(store)
    assert _committed(store) == (len(payload), hashlib.sha256(payload).digest())
    assert _data(store, len(payload)) == payload


def test_store_damaged_header_is_not_committed(store):
    _reboot(store)
    _upload(store, os.urandom(3000))
    flash = (ctypes.c_uint8 * _model_partition_size()).in_dll(store, "fake_flash")
    flash[store.model_store_capacity() + 9] ^= 0x01  # one bit of the stored size
    _reboot(store)
    assert _committed(store) is None


def test_store_refuses_sizes_and_offsets_outside_the_upload(store):
    _reboot(store)
    capacity = store.model_store_capacity()
    assert store.model_store_begin(0) != 0
    assert store.model_store_begin(capacity + 1) != 0
    assert store.model_store_begin(100) == 0
    assert store.model_store_write(90, b"x" * 20, 20) != 0
    assert store.model_store_commit(99, b"\x00" * 32) != 0


def test_store_without_partition_reports_no_capacity(store):
    ctypes.c_int.in_dll(store, "fake_present").value = 0
    try:
        assert store.model_store_init() != 0
        assert store.model_store_capacity() == 0
        assert store.model_store_begin(10) != 0
        assert _committed(store) is None
    finally:
        ctypes.c_int.in_dll(store, "fake_present").value = 1
        _reboot(store)


# ---- (3) partition tables --------------------------------------------------------------------------------

def _size(text: str) -> int:
    text = text.strip()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text, 0) * scale


def _partitions(name: str = "partitions.csv") -> list[dict]:
    rows = []
    lines = [ln for ln in (FW / name).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for row in csv.reader(io.StringIO("\n".join(lines))):
        name_, ptype, subtype, offset, size = (field.strip() for field in row[:5])
        rows.append({"name": name_, "type": ptype, "subtype": subtype, "offset": _size(offset), "size": _size(size)})
    return rows


def _table_of(target: str) -> str:
    """The partition table a target's build uses (CONFIG_PARTITION_TABLE_CUSTOM_FILENAME, as in ESP-IDF)."""
    return _sdkconfig(target).get("CONFIG_PARTITION_TABLE_CUSTOM_FILENAME", "partitions.csv")


def _profile_targets() -> list[str]:
    """Every profile of a real chip (the virtual board has no flash table)."""
    return [name for name in available() if load_profile(name).chip in TARGETS]


@pytest.mark.parametrize("table", sorted(p.name for p in FW.glob("partitions*.csv")))
def test_partition_table_parses_and_is_aligned(table):
    parts = _partitions(table)
    assert [p["name"] for p in parts].count("model") == 1
    end = 0x9000  # partition table at 0x8000 (CONFIG_PARTITION_TABLE_OFFSET) takes one sector
    for part in sorted(parts, key=lambda p: p["offset"]):
        assert part["offset"] >= end, f"{table}: {part['name']} overlaps the partition before it"
        align = 0x10000 if part["type"] == "app" else SECTOR
        assert part["offset"] % align == 0 and part["size"] % SECTOR == 0, f"{table}: {part['name']} misaligned"
        end = part["offset"] + part["size"]
    assert {p["name"] for p in parts} >= {"nvs", "phy_init", "factory", "model"}
    model = next(p for p in parts if p["name"] == "model")
    assert model["type"] == "data" and int(model["subtype"], 0) == 0x40


@pytest.mark.parametrize("name", _profile_targets())
def test_profile_model_store_matches_its_partition_table(name):
    # Every chip profile, 4 MB and 8 MB flash alike: the table its sdkconfig selects fits the profile's
    # flash, and its `model` partition minus the header sector is exactly the profile's model_max_bytes
    # (what the board reports as store_capacity in HELLO).
    profile = load_profile(name)
    table = _table_of(profile.chip)
    parts = _partitions(table)
    end = max(p["offset"] + p["size"] for p in parts)
    assert end <= profile.flash_bytes, f"{table} ends at {end:#x}, beyond {name}'s {profile.flash_bytes:#x} flash"
    model = next(p for p in parts if p["name"] == "model")
    assert model["size"] - SECTOR == profile.model_max_bytes, (
        f"{name}: {table} gives a store of {model['size'] - SECTOR} bytes, the profile says model_max_bytes "
        f"{profile.model_max_bytes}")
    header = (MAIN / "model_store.h").read_text()
    assert re.search(r'MODEL_STORE_LABEL "model"', header) and re.search(r"MODEL_STORE_SUBTYPE 0x40", header)


def test_8mb_profile_has_its_own_table():
    s3 = load_profile("esp32s3")
    assert s3.flash_bytes == 8 * 1024 * 1024 and s3.model_max_bytes == 2 * 1024 * 1024
    assert _table_of("esp32s3") == "partitions_8mb.csv"
    assert max(p["offset"] + p["size"] for p in _partitions("partitions_8mb.csv")) > FLASH_4MB


# ---- (4) sdkconfig defaults and Kconfig agree with the profiles ---------------------------------------

def _sdkconfig(target: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in ("sdkconfig.defaults", f"sdkconfig.defaults.{target}"):  # the target file wins, as in IDF
        for line in (FW / name).read_text().splitlines():
            unset = re.match(r"#\s*(CONFIG_\w+) is not set", line)
            if unset:
                values[unset.group(1)] = "n"
            elif line.startswith("CONFIG_"):
                key, _, value = line.partition("=")
                values[key] = value.strip().strip('"')
    return values


@pytest.mark.parametrize("target", TARGETS)
def test_sdkconfig_matches_profile_clock_and_baud(target):
    profile = load_profile(target)
    cfg = _sdkconfig(target)
    freq = [k for k, v in cfg.items() if re.fullmatch(r"CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ_\d+", k) and v == "y"]
    assert freq == [f"CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ_{profile.cpu_mhz}"]
    assert int(cfg["CONFIG_HIL_LINK_BAUD"]) == profile.baud
    if profile.transport == "uart":
        assert cfg.get("CONFIG_HIL_LINK_UART") == "y"
        # The baud option only takes a value under the custom console choice.
        assert cfg.get("CONFIG_ESP_CONSOLE_UART_CUSTOM") == "y"
        assert int(cfg["CONFIG_ESP_CONSOLE_UART_BAUDRATE"]) == profile.baud
    else:
        assert profile.transport == "usb-serial-jtag"
        assert cfg.get("CONFIG_HIL_LINK_USB_SERIAL_JTAG") == "y"
        assert cfg.get("CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG") == "y"


@pytest.mark.parametrize("target", TARGETS)
def test_sdkconfig_matches_profile_memory_and_kernels(target):
    profile = load_profile(target)
    cfg = _sdkconfig(target)
    assert int(cfg["CONFIG_HIL_ARENA_SIZE"]) == profile.arena_bytes
    flash = [k for k, v in cfg.items() if re.fullmatch(r"CONFIG_ESPTOOLPY_FLASHSIZE_\d+MB", k) and v == "y"]
    assert f"CONFIG_ESPTOOLPY_FLASHSIZE_{profile.flash_bytes // (1024 * 1024)}MB" in flash
    kernel = {"esp-nn": "CONFIG_NN_OPTIMIZED", "reference": "CONFIG_NN_ANSI_C"}[profile.kernels]
    assert cfg.get(kernel) == "y"
    assert cfg.get("CONFIG_NN_SKIP_NUDGE") == "n", "fast requantization breaks bit-exactness with the reference"
    assert cfg.get("CONFIG_PARTITION_TABLE_CUSTOM") == "y"
    table = cfg.get("CONFIG_PARTITION_TABLE_CUSTOM_FILENAME")
    assert table and (FW / table).is_file() and cfg.get("CONFIG_PARTITION_TABLE_FILENAME") == table


def test_kconfig_arena_defaults_match_profiles():
    kconfig = (MAIN / "Kconfig.projbuild").read_text()
    block = kconfig.split("config HIL_ARENA_SIZE", 1)[1].split("config ", 1)[0]
    defaults = {m.group(2).lower(): int(m.group(1))
                for m in re.finditer(r"default (\d+) if IDF_TARGET_(ESP32\w*)", block)}
    fallback = int(re.search(r"default (\d+)\s*\n", block).group(1))
    for target in TARGETS:
        assert defaults.get(target, fallback) == load_profile(target).arena_bytes, target


def test_every_hil_option_used_is_declared_in_kconfig():
    # Kconfig drops unknown names from sdkconfig.defaults without a word; a typo would silently fall back.
    declared = set(re.findall(r"^\s*config (HIL_\w+)", (MAIN / "Kconfig.projbuild").read_text(), flags=re.M))
    used = set()
    for path in [*FW.glob("sdkconfig.defaults*"), *MAIN.glob("*.c"), *MAIN.glob("*.cc"), *MAIN.glob("*.h")]:
        used |= set(re.findall(r"CONFIG_(HIL_\w+)", path.read_text()))
    assert used, "no CONFIG_HIL_* option used anywhere"
    assert used <= declared, f"not declared in Kconfig.projbuild: {sorted(used - declared)}"


# ---- (5) component manifest ------------------------------------------------------------------------------

def test_component_manifest_depends_on_esp_tflite_micro():
    manifest = yaml.safe_load((MAIN / "idf_component.yml").read_text())
    deps = manifest["dependencies"]
    assert "espressif/esp-tflite-micro" in deps
    assert re.match(r">=\s*5\.", str(deps["idf"]["version"] if isinstance(deps["idf"], dict) else deps["idf"]))


# ---- with ESP-IDF: the real build ------------------------------------------------------------------------

@needs_idf
@pytest.mark.parametrize("target", TARGETS)
def test_idf_build(target, tmp_path):
    build = tmp_path / f"build-{target}"
    env = dict(os.environ, HIL_FW_VERSION="0.0-test", HIL_BUILD_HASH="abc123")
    cmd = ["idf.py", "-B", str(build), "-D", f"SDKCONFIG={build / 'sdkconfig'}", "-D", f"IDF_TARGET={target}", "build"]
    result = subprocess.run(cmd, cwd=FW, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (build / "hil_bench.bin").is_file()
