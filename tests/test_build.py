"""Firmware build orchestration: the idf.py command line, the build cache, prebuilt dirs and build errors.

ESP-IDF is not installed here: tests/fixtures/fake_idf.py stands in for idf.py. It records its argv and
writes an ESP-IDF build directory layout (flasher_args.json, project_description.json, placeholder .bin),
so these tests check what the harness asks idf.py to do and how it reads the result.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from harness.boards.build import (IDF_MISSING, LOG_FILE, build_command, ensure_build, firmware_hash, firmware_sources,
                           idf_version, last_error_line, load_build_dir)
from harness.errors import BuildError

REPO = Path(__file__).resolve().parent.parent
FAKE_IDF = Path(__file__).resolve().parent / "fixtures" / "fake_idf.py"


def _write_idf_wrapper(path: Path) -> Path:
    """An executable `idf.py` that runs the fake with this interpreter (as export.sh puts idf.py on PATH)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_IDF}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def idf(tmp_path, monkeypatch):
    """The fake idf.py and the file where it records each invocation."""
    argv_log = tmp_path / "idf_argv.jsonl"
    monkeypatch.setenv("FAKE_IDF_ARGV_LOG", str(argv_log))
    monkeypatch.delenv("FAKE_IDF_FAIL", raising=False)
    monkeypatch.delenv("FAKE_IDF_VERSION", raising=False)
    monkeypatch.delenv("IDF_TARGET", raising=False)

    class Idf:
        path = str(_write_idf_wrapper(tmp_path / "idf-bin" / "idf.py"))

        @staticmethod
        def builds() -> list[list[str]]:
            if not argv_log.exists():
                return []
            calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
            return [argv for argv in calls if "build" in argv]

    return Idf


@pytest.fixture
def firmware(tmp_path) -> Path:
    """A copy of firmware/ to edit, with a source of our own so the test does not depend on its contents."""
    copy = tmp_path / "firmware"
    shutil.copytree(REPO / "firmware", copy, ignore=shutil.ignore_patterns("build*", "managed_components"))
    (copy / "main").mkdir(exist_ok=True)
    (copy / "main" / "hil_test_probe.c").write_text("int hil_test_probe(void) { return 1; }\n")
    return copy


def _quiet(_line: str) -> None:
    pass


# Hash -----------------------------------------------------------------------------------------------
def test_firmware_hash_covers_sources_target_and_idf_version(firmware):
    base = firmware_hash(firmware, "esp32s3", "v5.2.1")
    assert len(base) == 16 and int(base, 16) >= 0
    assert firmware_hash(firmware, "esp32s3", "v5.2.1") == base
    assert firmware_hash(firmware, "esp32c3", "v5.2.1") != base
    assert firmware_hash(firmware, "esp32s3", "v5.3") != base

    (firmware / "sdkconfig.defaults.esp32s3").write_text("CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ_240=y\n")
    with_defaults = firmware_hash(firmware, "esp32s3", "v5.2.1")
    assert with_defaults != base

    # Generated or unrelated files do not change the firmware's identity.
    (firmware / "sdkconfig").write_text("CONFIG_IDF_TARGET=\"esp32s3\"\n")
    (firmware / "README.md").write_text("notes\n")
    (firmware / "build" / "esp32s3").mkdir(parents=True)
    (firmware / "build" / "esp32s3" / "generated.c").write_text("int x;\n")
    (firmware / "managed_components" / "espressif__esp-nn").mkdir(parents=True)
    (firmware / "managed_components" / "espressif__esp-nn" / "nn.c").write_text("int y;\n")
    assert firmware_hash(firmware, "esp32s3", "v5.2.1") == with_defaults

    # A rename with the same content is a different firmware tree.
    (firmware / "main" / "hil_test_probe.c").rename(firmware / "main" / "hil_test_probe2.c")
    assert firmware_hash(firmware, "esp32s3", "v5.2.1") != with_defaults


def test_firmware_sources_are_sorted_relative_paths(firmware):
    sources = [p.as_posix() for p in firmware_sources(firmware)]
    assert "main/hil_test_probe.c" in sources
    assert sources == sorted(sources)


# Command line ---------------------------------------------------------------------------------------
def test_build_command_puts_global_options_before_actions(tmp_path):
    build_dir = tmp_path / "build" / "esp32s3"
    command = build_command("/opt/idf/tools/idf.py", "firmware", build_dir, "esp32s3", "0123456789abcdef", "0.1.0")
    assert command == [
        "/opt/idf/tools/idf.py", "-C", "firmware", "-B", str(build_dir),
        f"-DSDKCONFIG={build_dir / 'sdkconfig'}",
        "-DHIL_BUILD_HASH=0123456789abcdef", "-DHIL_FW_VERSION=0.1.0", "-DIDF_TARGET=esp32s3",
        "build",
    ]
    with_set_target = build_command("idf.py", "firmware", build_dir, "esp32c3", "0123456789abcdef", "0.1.0",
                                    set_target=True)
    assert with_set_target[-3:] == ["set-target", "esp32c3", "build"]
    assert all(not arg.startswith("-") for arg in with_set_target[with_set_target.index("set-target"):])


def test_idf_version_parses_idf_py_output(idf, monkeypatch):
    assert idf_version(idf.path) == "v5.2.1"
    monkeypatch.setenv("FAKE_IDF_VERSION", "v5.3-dev-1234-gabcdef")
    assert idf_version(idf.path) == "v5.3-dev-1234-gabcdef"


# Cache ----------------------------------------------------------------------------------------------
def test_first_build_builds_second_is_a_cache_hit_and_an_edit_rebuilds(idf, firmware, tmp_path):
    build_root = tmp_path / "build"
    first = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert len(idf.builds()) == 1
    assert first.dir == build_root / "esp32s3"
    assert first.build_hash == firmware_hash(firmware, "esp32s3", "v5.2.1")
    assert first.idf_version == "v5.2.1" and not first.prebuilt
    argv = idf.builds()[0]
    assert f"-DHIL_BUILD_HASH={first.build_hash}" in argv and "-DIDF_TARGET=esp32s3" in argv
    assert "set-target" not in argv  # a fresh directory needs no fullclean
    assert first.build_hash.encode() in first.app_bin.read_bytes()
    assert [offset for offset, _ in first.flash_files()] == [0x0, 0x8000, 0x10000]
    assert first.flash_settings == {"flash_mode": "dio", "flash_freq": "80m", "flash_size": "2MB"}
    assert (first.dir / LOG_FILE).is_file()

    again = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert len(idf.builds()) == 1, "same sources must not rebuild"
    assert again.build_hash == first.build_hash

    source = firmware / "main" / "hil_test_probe.c"
    source.write_text(source.read_text() + "/* edited */\n")
    edited = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert len(idf.builds()) == 2
    assert edited.build_hash != first.build_hash
    assert edited.build_hash.encode() in edited.app_bin.read_bytes()


def test_targets_build_side_by_side_and_a_foreign_build_dir_gets_set_target(idf, firmware, tmp_path):
    build_root = tmp_path / "build"
    s3 = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    c3 = ensure_build("esp32c3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert s3.dir != c3.dir and s3.build_hash != c3.build_hash
    assert len(idf.builds()) == 2

    # A build/esp32 directory configured for another chip (copied by hand): set-target, then build.
    shutil.copytree(s3.dir, build_root / "esp32")
    (build_root / "esp32" / "hil-stamp.json").unlink()
    esp32 = ensure_build("esp32", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    argv = idf.builds()[-1]
    assert argv[-3:] == ["set-target", "esp32", "build"]
    assert esp32.target == "esp32"
    assert [offset for offset, _ in esp32.flash_files()][0] == 0x1000  # the ESP32's bootloader offset


def test_idf_version_change_rebuilds(idf, firmware, tmp_path, monkeypatch):
    build_root = tmp_path / "build"
    old = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    monkeypatch.setenv("FAKE_IDF_VERSION", "v5.3.1")
    new = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert len(idf.builds()) == 2
    assert new.build_hash != old.build_hash and new.idf_version == "v5.3.1"


def test_idf_py_found_through_idf_path(idf, firmware, tmp_path, monkeypatch):
    idf_path = tmp_path / "esp-idf"
    _write_idf_wrapper(idf_path / "tools" / "idf.py")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setenv("IDF_PATH", str(idf_path))
    build = ensure_build("esp32s3", firmware_dir=firmware, build_root=tmp_path / "build", log=_quiet)
    assert len(idf.builds()) == 1  # the only idf.py reachable is $IDF_PATH/tools/idf.py
    assert build.flasher_args["extra_esptool_args"]["chip"] == "esp32s3"


# Prebuilt -------------------------------------------------------------------------------------------
def test_prebuilt_build_dir_is_used_as_is(idf, firmware, tmp_path, monkeypatch):
    made = ensure_build("esp32s3", firmware_dir=firmware, build_root=tmp_path / "ci", idf_py=idf.path, log=_quiet)
    prebuilt_dir = tmp_path / "artifact"
    shutil.copytree(made.dir, prebuilt_dir)
    (prebuilt_dir / "hil-stamp.json").unlink()  # as a CI artifact without our stamp
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # no ESP-IDF needed for a prebuilt dir
    monkeypatch.delenv("IDF_PATH", raising=False)

    build = ensure_build("esp32s3", firmware_dir=firmware, build_dir=prebuilt_dir, log=_quiet)
    assert len(idf.builds()) == 1
    assert build.prebuilt and build.dir == prebuilt_dir
    assert build.build_hash == made.build_hash  # read back from the -D entry in CMakeCache.txt
    assert build.app_bin == prebuilt_dir / "hil_bench.bin"


def test_prebuilt_without_flasher_args_is_refused(tmp_path, firmware):
    prebuilt_dir = tmp_path / "not-a-build"
    prebuilt_dir.mkdir()
    (prebuilt_dir / "app.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(BuildError) as caught:
        ensure_build("esp32s3", firmware_dir=firmware, build_dir=prebuilt_dir, log=_quiet)
    assert caught.value.code == "HIL703"
    assert f"{prebuilt_dir} has no flasher_args.json" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_prebuilt_for_another_target_is_refused(idf, firmware, tmp_path):
    made = ensure_build("esp32c3", firmware_dir=firmware, build_root=tmp_path / "ci", idf_py=idf.path, log=_quiet)
    with pytest.raises(BuildError) as caught:
        load_build_dir(made.dir, "esp32s3")
    assert caught.value.code == "HIL704"
    assert "firmware for esp32c3, the profile says esp32s3" in str(caught.value)


def test_prebuilt_missing_a_listed_file_is_refused(idf, firmware, tmp_path):
    made = ensure_build("esp32s3", firmware_dir=firmware, build_root=tmp_path / "ci", idf_py=idf.path, log=_quiet)
    (made.dir / "partition_table" / "partition-table.bin").unlink()
    with pytest.raises(BuildError, match="lacks partition_table/partition-table.bin"):
        load_build_dir(made.dir, "esp32s3")


# Errors ---------------------------------------------------------------------------------------------
def test_missing_idf_py_says_how_to_install(firmware, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.delenv("IDF_PATH", raising=False)
    with pytest.raises(BuildError) as caught:
        ensure_build("esp32s3", firmware_dir=firmware, build_root=tmp_path / "build", log=_quiet)
    assert caught.value.code == "HIL701"
    assert str(caught.value) == f"HIL701 {IDF_MISSING}"
    assert "\n" not in str(caught.value)


def test_failing_build_reports_the_error_line_and_the_log(idf, firmware, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_IDF_FAIL", "'hil_port_t' has no member named 'invoke'")
    build_root = tmp_path / "build"
    with pytest.raises(BuildError) as caught:
        ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    message = str(caught.value)
    log_path = build_root / "esp32s3" / LOG_FILE
    assert caught.value.code == "HIL702"
    assert "\n" not in message
    assert "../main/hil_main.c:42:5: error: 'hil_port_t' has no member named 'invoke'" in message
    assert str(log_path) in message
    logged = log_path.read_text()
    assert "ninja: build stopped" in logged and "[exit status 2]" in logged

    # The failed build left no stamp: fixing the error builds again.
    monkeypatch.delenv("FAKE_IDF_FAIL")
    build = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    assert len(idf.builds()) == 2 and (build.dir / "flasher_args.json").is_file()


def test_last_error_line_picks_the_cause():
    cmake = ("-- Building ESP-IDF components for target esp32s3\n"
             "CMake Error at main/CMakeLists.txt:3 (idf_component_register):\n"
             "  Unknown CMake command \"idf_component_registr\".\n"
             "-- Configuring incomplete, errors occurred!\n"
             "cmake failed with exit code 1, output of the command is in the build/log/idf_py_stderr_output\n")
    assert last_error_line(cmake) == ("CMake Error at main/CMakeLists.txt:3 (idf_component_register): "
                                      "Unknown CMake command \"idf_component_registr\".")
    linker = ("[905/907] Linking CXX executable hil_bench.elf\n"
              "FAILED: hil_bench.elf\n"
              "/ld: hil_bench.elf section `.dram0.bss' will not fit in region `dram0_0_seg'\n"
              "collect2: error: ld returned 1 exit status\n"
              "ninja: build stopped: subcommand failed.\n")
    assert last_error_line(linker) == "collect2: error: ld returned 1 exit status"
    assert last_error_line("Killed\n") == "Killed"


def test_reference_kernels_build_is_its_own_build_with_the_overlay(idf, firmware, tmp_path):
    # --kernels both: the reference build lists the ANSI C overlay after sdkconfig.defaults, lives in
    # build/<target>-reference and has its own hash, so the two builds flash in turn without rebuilding.
    build_root = tmp_path / "build"
    default = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet)
    ref = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet,
                       kernels="reference")
    assert ref.dir == build_root / "esp32s3-reference" and default.dir == build_root / "esp32s3"
    assert ref.build_hash != default.build_hash
    assert firmware_hash(firmware, "esp32s3", "v5.2.1", "esp-nn") == firmware_hash(firmware, "esp32s3", "v5.2.1")
    argv = idf.builds()[-1]
    overlay = next(a for a in argv if a.startswith("-DSDKCONFIG_DEFAULTS="))
    assert overlay == (f"-DSDKCONFIG_DEFAULTS={firmware / 'sdkconfig.defaults'};"
                       f"{firmware / 'sdkconfig.defaults.kernels-reference'}")
    assert not any(a.startswith("-DSDKCONFIG_DEFAULTS=") for a in idf.builds()[0])
    text = (firmware / "sdkconfig.defaults.kernels-reference").read_text()
    assert "CONFIG_NN_ANSI_C=y" in text and "# CONFIG_NN_OPTIMIZED is not set" in text
    again = ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet,
                         kernels="reference")
    assert again.build_hash == ref.build_hash and len(idf.builds()) == 2  # cached
    with pytest.raises(BuildError):
        ensure_build("esp32s3", firmware_dir=firmware, build_root=build_root, idf_py=idf.path, log=_quiet,
                     kernels="fast-maybe")
