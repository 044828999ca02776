"""pytest plugin: `pytest --device ...` benchmarks every model on every device and gates regressions.

Loaded through the `pytest11` entry point, so it is in every pytest run of this repository: the HIL
session (models, arena probes, records, baselines) is built only when HIL cases are collected, never for a
run of unit tests. A wrong profile, model or data directory then stops the run with one `ERROR: HILxxx ...`
line after collection, before anything runs or is written.
Boards are opened when the first test needs them; a board that cannot be reached ends the session with one
line and no report. Everything after that (mismatch, regression, a board that stops mid-run) is a test
failure with one line, and the evidence goes into results.json and junit.xml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .bench import run as bench, data, noise, perfrule, refcache
from .gate import compare, baseline as gate
from .boards import farm, places
from .report import html as htmlreport, manifest, outputs as report
from .boards.board import Board
from .errors import ConfigError, HarnessError
from .bench.model import TASKS, Model, check_model, load_registry, load_user_model, sidecar_path
from .boards.profiles import Profile, check_board, load_profile
from .bench.reference import REFERENCES, make_reference
from .bench.reference import check_available as check_reference
from .bench.results import Result
from .link.transport import open_link

REPO = Path(__file__).resolve().parent.parent
_SESSION = pytest.StashKey["HilSession"]()
_SETUP_ERROR = pytest.StashKey[str]()  # why the session could not be built


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "HIL bench: INT8 ECG models on ESP32 boards")
    g.addoption("--device", action="append", default=None, metavar="DEV",
                help="board to run on: 'virtual' (default), a port such as /dev/ttyUSB0, a pyserial URL "
                     "(socket://host:port) or 'auto'; repeat for several boards")
    g.addoption("--spread", default="each", choices=farm.SPREADS,
                help="with several --device boards (run in parallel): 'each' board runs every model (default), "
                     "'models' runs each model once on the next free board, 'beats' splits each model's beats "
                     "over the boards (same profile) and merges the figures exactly")
    g.addoption("--lg-coordinator", default=None, metavar="HOST:PORT",
                help="labgrid coordinator for --device labgrid:PLACE (default: $LG_COORDINATOR)")
    g.addoption("--lg-wait", type=float, default=0.0, metavar="S",
                help="wait up to S seconds for a labgrid place someone else holds (default: fail at once)")
    g.addoption("--target", default=None, metavar="PROFILE",
                help="device profile (device_profiles/<name>.yaml or a path); default: 'virtual' for the "
                     "virtual board, 'esp32' otherwise")
    g.addoption("--baud", type=int, default=None, help="link baud rate (default: the profile's)")
    g.addoption("--build-dir", default=None, help="use this prebuilt ESP-IDF build instead of building")
    g.addoption("--skip-flash", action="store_true", help="never flash; use the firmware the board runs (its HELLO must still match the profile)")
    g.addoption("--model", action="append", default=None, metavar="PATH",
                help="benchmark this INT8 .tflite; repeat for several (the --model-* flags apply to each). "
                     f"Metadata from the sidecar beside it (my.tflite → {sidecar_path('my.tflite')}) and the "
                     "--model-* flags, which win")
    g.addoption("--model-window", default=None, metavar="BEFORE:AFTER[:DECIMATE[:NORMALIZE]]",
                help="input window of --model, in 360 Hz samples around the R peak; DECIMATE defaults to 1 and "
                     f"NORMALIZE to none; NORMALIZE is one of {', '.join(data.NORMALIZATIONS)}")
    g.addoption("--model-labels", default=None, metavar="N,S,V,F,Q", help="output labels of a classifier --model")
    g.addoption("--model-task", default=None, choices=TASKS,
                help="what --model does (needed unless its sidecar says)")
    g.addoption("--model-threshold", type=float, default=None, metavar="ERROR",
                help="autoencoder --model: reconstruction error (MSE) above which a beat counts as anomalous")
    g.addoption("--models", default=None, metavar="NAMES",
                help="comma list of registry models to run (default: all of models/registry.yaml)")
    g.addoption("--mitdb", default=None, metavar="DIR",
                help="MIT-BIH Arrhythmia Database directory (default: the records bundled in data/mitdb)")
    g.addoption("--records", default=None, metavar="LIST",
                help="records: 'bundled', 'DS1', 'DS2', 'all' or '213,232' (default: bundled, or all with --mitdb)")
    g.addoption("--max-beats", type=int, default=None, help="stop after this many beats per model")
    g.addoption("--reference", default="tflite-ref", choices=REFERENCES,
                help="host interpreter the device must match bit for bit (default tflite-ref = TFLite BUILTIN_REF)")
    g.addoption("--reference-cache", default=None, metavar="DIR|off",
                help="keep reference outputs on disk, keyed by model, input bytes and interpreter version "
                     "(default $HIL_REFERENCE_CACHE or ~/.cache/hil-bench/reference; 'off' recomputes)")
    g.addoption("--warmup", type=int, default=10, help="beats left out of latency statistics")
    g.addoption("--kernels", default="profile", choices=("profile", "both"),
                help="'both': run each model on the target's esp-nn build and on its reference build "
                     "(CONFIG_NN_ANSI_C), flashed in turn, and report both verdicts and the speedup per op and "
                     "overall (results.json kernels); default: the profile's kernels only")
    g.addoption("--calibrate", action="store_true",
                help="refit the profile's cost constants from the per-op device cycles this run measured and "
                     "write them into its YAML with the board and date (needs a board, not the virtual one)")
    g.addoption("--per-op-beat", default="0", metavar="N|none",
                help="the beat (0-based in the run) whose per-op cycles the board reports (OP_PROFILE) into "
                     "results.json per_op; 'none' to skip (default 0)")
    g.addoption("--window", type=int, default=None, help="INFER frames in flight (default: the profile's)")
    g.addoption("--out", default="out", help="directory for the reports: results.json, junit.xml, report.html, summary.md (default out/)")
    g.addoption("--history", default=None, metavar="PATH|off",
                help="SQLite history every run appends its figures to, for trend plots (default "
                     "OUT/history.sqlite; 'off' keeps none)")
    g.addoption("--baseline-dir", default=str(REPO / "baselines"), help="committed baselines")
    g.addoption("--update-baseline", action="store_true",
                help="rewrite the baselines from this run (complete, bit-exact runs only); prints old → new")
    g.addoption("--gate", default="warn", choices=gate.MODES, dest="gate_mode",
                help="strict: a figure the gate could not compare (no baseline, other beats...) fails the run "
                     "(what CI uses); warn (default): it is printed as a warning")
    g.addoption("--gate-alpha", type=float, default=None, metavar="P",
                help="significance level of the gate's paired tests (default: the baseline's, 0.05)")
    g.addoption("--candidate", default=None, metavar="PATH",
                help="a candidate .tflite for the one model given with --models/--model: both run on the same "
                     "boards over the same beats; a paired table goes to the terminal and OUT/compare.md")
    g.addoption("--virtual-throttle", action="store_true",
                help="virtual board: limit the link to the baud rate, like a UART")
    g.addoption("--virtual-fault", action="append", default=None, metavar="SPEC",
                help="virtual board fault switch, e.g. flip-lsb:5 (see harness/boards/virtual)")
    # Noise (harness/bench/noise.py): MIT-BIH Noise Stress Test Database noise at an SNR, before windowing.
    g.addoption("--noise", default=None, metavar="NAME:DB,...",
                help="add NSTDB noise at these SNRs (NSTDB's definition), e.g. bw:12,ma:6 (bw, ma; em if --nstdb has it)")
    g.addoption("--noise-sweep", default=None, metavar="NAMES",
                help="after the clean pass, stream the beats again per noise and SNR (24,18,12,6,0,-6 dB), e.g. bw,ma")
    g.addoption("--noise-snr", default=None, metavar="DB,...", help="SNRs of --noise-sweep (default 24,18,12,6,0,-6)")
    g.addoption("--noise-seed", type=int, default=None,
                help="seed of each record's noise offset (default 0; recorded in provenance)")
    g.addoption("--nstdb", default=None, metavar="DIR",
                help="NSTDB noise records (default ../shared/nstdb, else the 300 s bundled in data/nstdb)")
    g.addoption("--protocol", action="append", default=None, choices=("hil", "mlperf-tiny"),
                help="what the device speaks: hil (ours) or mlperf-tiny (MLPerf Tiny's benchmark API, "
                     "docs/mlperf.md); once for every device or once per --device (default: the profile's)")
    g.addoption("--mlperf-model-id", default=None, metavar="ID",
                help="mlperf-tiny: the m-model-[ID] the firmware must print (default: hb-<sha256 prefix>, "
                     "what the virtual MLPerf device prints)")
    g.addoption("--latency-rule", default="per-beat", choices=("per-beat", "mlperf-tiny"),
                help="mlperf-tiny: also measure latency under MLPerf Tiny's performance rules (warm-up, "
                     "5 windows of ≥ --mlperf-window-s, median) into results' latency.mlperf_tiny")
    g.addoption("--mlperf-window-s", type=float, default=10.0, metavar="S",
                help="minimum window of --latency-rule mlperf-tiny (MLPerf's rule: 10; shorter runs are "
                     "marked not MLPerf-compliant)")


@dataclass
class DeviceSlot:
    device: str
    profile: Profile
    board: Board | None = None
    virtual: object | None = None
    link: object | None = None
    protocol: str = "hil"
    alt: dict = field(default_factory=dict)  # --kernels both on the virtual board: kernels → (board, virtual)
    label: str = ""  # the device, numbered when `virtual` is given more than once
    place: object | None = None  # the labgrid place held for a labgrid:PLACE device (harness/boards/places.py)

    def __post_init__(self) -> None:
        self.label = self.label or self.device


@dataclass
class HilSession:
    """Everything one pytest session benchmarks, validated up front."""

    models: list[Model]
    slots: list[DeviceSlot]
    spec: bench.BenchSpec
    reference: str
    out_dir: Path
    baseline_dir: Path
    update_baseline: bool
    options: dict
    reference_cache: Path | None = None
    gate_mode: str = "warn"
    gate_alpha: float | None = None
    candidates: dict = field(default_factory=dict)  # candidate model name → committed model name
    baseline_lines: list[str] = field(default_factory=list)
    spread: str = "each"
    farm: farm.Farm | None = None
    results: list[Result] = field(default_factory=list)
    aborted: str | None = None
    report_notes: list[str] = field(default_factory=list)

    # -- setup ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: pytest.Config) -> "HilSession":
        opt = config.option
        mix, sweep = noise.from_options(opt.noise, opt.noise_sweep, opt.noise_snr, opt.noise_seed, opt.nstdb)
        if mix is not None and opt.update_baseline:
            raise ConfigError("--update-baseline with --noise", "baselines hold clean figures: drop --noise "
                              "(a --noise-sweep run may update them, its first pass is clean)", code="HIL150")
        devices = _expand_devices(opt.device or ["virtual"], opt.target)
        protocols = opt.protocol or []
        if len(protocols) > 1 and len(protocols) != len(devices):
            raise ConfigError(f"--protocol given {len(protocols)} times for {len(devices)} --device",
                              "give --protocol once (every device) or once per --device, in the same order",
                              code="HIL108")
        if opt.mlperf_window_s <= 0:
            raise ConfigError(f"--mlperf-window-s {opt.mlperf_window_s:g} is not positive",
                              "give seconds, e.g. --mlperf-window-s 10 (MLPerf's rule)", code="HIL108")
        slots = []
        for i, device in enumerate(devices):
            name = opt.target or ("virtual" if device == "virtual" else "esp32")
            profile = load_profile(name)
            protocol = protocols[i if len(protocols) > 1 else 0] if protocols else profile.protocol
            label = f"virtual#{devices[:i + 1].count('virtual')}" if devices.count("virtual") > 1 and \
                device == "virtual" else device
            slots.append(DeviceSlot(device=device, profile=profile, protocol=protocol, label=label))
        _check_spread(opt, slots)
        if opt.kernels == "both" and (opt.build_dir or opt.skip_flash) and any(d != "virtual" for d in devices):
            raise ConfigError("--kernels both with --build-dir or --skip-flash",
                              "--kernels both builds and flashes the esp-nn and the reference firmware in turn: "
                              "drop --build-dir/--skip-flash", code="HIL108")
        if opt.calibrate and (all(d == "virtual" for d in devices) or _per_op_beat(opt.per_op_beat) is None):
            raise ConfigError("--calibrate needs per-op device cycles: "
                              + ("the virtual board's per-op figures are the cost model's own estimates"
                                 if all(d == "virtual" for d in devices) else "--per-op-beat none turns them off"),
                              "run --calibrate with --device on a board flashed with this firmware", code="HIL160")
        if any(s.device.startswith(places.PREFIX) for s in slots):  # labgrid missing or no coordinator: now
            places.labgrid_python()
            lg_coordinator = places.coordinator(opt.lg_coordinator)
        else:
            lg_coordinator = None
        check_reference(opt.reference)  # a missing interpreter package is one line now, not a traceback later
        models = _load_models(opt)
        candidates = {}
        if opt.candidate:
            models, candidates = _with_candidate(models, Path(opt.candidate))
        if opt.gate_alpha is not None and not 0.0 < opt.gate_alpha < 1.0:
            raise ConfigError(f"--gate-alpha {opt.gate_alpha:g} is not a significance level",
                              "give a number between 0 and 1, e.g. --gate-alpha 0.01", code="HIL132")
        for model in models:
            for slot in slots:
                check_model(model, slot.profile)
        mitdb = Path(opt.mitdb).resolve() if opt.mitdb else data.BUNDLED_DIR  # results name it absolute
        records = data.resolve_records(opt.records or ("all" if opt.mitdb else "bundled"))
        for name in records:  # fail now, not after an hour of streaming
            data.load_record(mitdb, name)
        out_dir = Path(opt.out)
        report.check_writable(out_dir)
        baseline_dir = Path(opt.baseline_dir)
        cache = None
        if (opt.reference_cache or "").lower() != "off":
            cache = refcache.check_dir(Path(opt.reference_cache) if opt.reference_cache else refcache.default_dir())
        for slot in slots:  # a malformed baseline is a user mistake: say so before running anything
            gate.load_baseline(baseline_dir / f"{slot.profile.name}.json")
        return cls(models=models, slots=slots,
                   spec=bench.BenchSpec(mitdb_dir=mitdb, records=records, warmup=opt.warmup,
                                        max_beats=opt.max_beats, noise=mix, sweep=sweep, baud=opt.baud,
                                        per_op_beat=_per_op_beat(opt.per_op_beat)),
                   reference=opt.reference, out_dir=out_dir, baseline_dir=baseline_dir,
                   update_baseline=opt.update_baseline, reference_cache=cache,
                   gate_mode=opt.gate_mode, gate_alpha=opt.gate_alpha, candidates=candidates,
                   spread=opt.spread if len(slots) > 1 else "each",
                   options={"baud": opt.baud, "window": opt.window, "build_dir": opt.build_dir,
                            "skip_flash": opt.skip_flash, "throttle": opt.virtual_throttle,
                            "faults": tuple(opt.virtual_fault or ()), "mlperf_model_id": opt.mlperf_model_id,
                            "latency_rule": opt.latency_rule, "mlperf_window_s": opt.mlperf_window_s,
                            "kernels": opt.kernels, "calibrate": opt.calibrate,
                            "lg_coordinator": lg_coordinator, "lg_wait": opt.lg_wait})

    def cases(self) -> list[tuple[Model, DeviceSlot | None]]:
        """(model, board) per test; board None when the farm picks the boards (--spread models/beats)."""
        if self.spread != "each":
            return [(m, None) for m in self.models]
        return [(m, s) for s in self.slots for m in self.models]

    def case_id(self, case) -> str:
        model, slot = case
        return f"{model.name}@{slot.label}" if slot is not None else f"{model.name}@{self.spread}:{len(self.slots)}"

    # -- many boards ------------------------------------------------------------------------------------
    def start_farm(self) -> farm.Farm:
        """Queue every case's work and start a thread per board (once, at the first HIL case)."""
        if self.farm is None:
            self.farm = farm.Farm(self.slots, connect=self.board, run=self._run_one, label=lambda s: s.label,
                                  disconnect=self._disconnect)
            for case in self.cases():
                model, slot = case
                if self.spread == "beats" and model.task != "conformance":  # seeded inputs: one board
                    total = bench.count_beats(model, self.spec)
                    for rng in farm.split(total, len(self.slots)):
                        self.farm.add(farm.Job(case=self.case_id(case), model=model, shard=rng))
                else:
                    self.farm.add(farm.Job(case=self.case_id(case), model=model, pinned=slot))
            self.farm.start()
        return self.farm

    def farm_result(self, case) -> Result:
        """Wait for a case's work on the farm; its merged Result, gated and recorded."""
        model, slot = case
        jobs = [j for j in self.start_farm().jobs if j.case == self.case_id(case)]
        self.farm.wait(jobs)
        errors = [j.error for j in jobs if j.error is not None]
        if errors:
            raise errors[0]
        not_run = [j.not_run for j in jobs if j.not_run]
        if not_run:
            raise farm_not_run(not_run[0])
        if self.spread == "beats" and jobs[0].shard is not None:
            profile = self.slots[0].profile
            boards = "+".join(dict.fromkeys(j.result.device for j in jobs))  # in beat order
            result = bench.merge([j.shard_state for j in jobs], model, profile, boards, self.spec)
        else:
            result = jobs[0].result
            profile = next(s.profile for s in self.slots if s.label == result.device)
        return self._gate_and_keep(result, model, profile)

    def _disconnect(self, slot: DeviceSlot) -> None:
        board, link, virtual, place = slot.board, slot.link, slot.virtual, slot.place
        slot.board = slot.link = slot.virtual = slot.place = None
        try:
            if board is not None:
                board.close()
            elif link is not None:
                link.close()
        finally:
            if virtual is not None:
                virtual.stop()
            if place is not None:
                place.stop()  # releases the labgrid place


    # -- boards -----------------------------------------------------------------------------------------
    def board(self, slot: DeviceSlot) -> Board:
        if slot.board is None:
            slot.board = self._connect(slot)
        return slot.board

    def _connect(self, slot: DeviceSlot) -> Board:
        profile = slot.profile
        baud = self.options["baud"] or profile.baud
        window = self.options["window"] or profile.window
        if slot.protocol == "mlperf-tiny":
            return self._connect_mlperf(slot, baud)
        if slot.device == "virtual":
            from .boards.virtual import VirtualBoard

            slot.virtual = VirtualBoard(str(profile.path),
                                        throttle_baud=baud if self.options["throttle"] else None,
                                        faults=self.options["faults"])
            url = slot.virtual.start()
        else:
            from .boards.device import prepare_board  # the real-board path: build, flash, reset

            port = slot.device
            if port.startswith(places.PREFIX):  # acquire the labgrid place; its port is an rfc2217:// URL
                if slot.place is None:
                    slot.place = places.LabgridPlace(port[len(places.PREFIX):], self.options["lg_coordinator"],
                                                     wait_s=self.options["lg_wait"])
                    slot.place.start()
                port = slot.place.url
            url = prepare_board(port, profile, baud=baud, build_dir=self.options["build_dir"],
                                skip_flash=self.options["skip_flash"])
        slot.link = open_link(url, baud)
        board = Board(slot.link, timeout_s=profile.timeout_s, window=window, name=slot.label)
        try:
            hello = board.hello()  # our firmware answers, at the right baud, before any model is sent
        except HarnessError as err:
            if err.kind != "timeout" or slot.place is None or slot.place.power is None:
                raise
            # A wedged board in a labgrid place with a power switch: cycle its power once and ask again.
            slot.place.power_cycle()
            try:
                hello = board.hello()
            except HarnessError as again:
                again.message += f" (also after power-cycling labgrid place {slot.place.place})"
                raise again from None
        if slot.device != "virtual":  # a board we did not start: is it the one the profile describes?
            check_board(profile, hello, slot.device)
        return board

    def _connect_mlperf(self, slot: DeviceSlot, baud: int):
        """An MLPerf Tiny device (harness/boards/mlperf.py). Its firmware has the model compiled in: a real one is
        used as flashed (its m-model id is checked per model); the virtual one is started with the model."""
        from .boards.mlperf import MlperfBoard

        flash = None
        if slot.device == "virtual":
            from .boards.virtual import VirtualBoard

            def flash(data: bytes) -> str:  # "build and flash" the virtual MLPerf firmware with this model
                model = next(m for m in self.models if m.data == data)
                if slot.virtual is not None:
                    slot.virtual.stop()
                slot.virtual = VirtualBoard(str(slot.profile.path), api="mlperf-tiny", model=model.path,
                                            throttle_baud=baud if self.options["throttle"] else None,
                                            faults=self.options["faults"])
                return slot.virtual.start()

            url = flash(self.models[0].data)
        else:
            from .boards.device import prepare_board  # the port, its reset; our firmware is not flashed over theirs

            url = prepare_board(slot.device, slot.profile, baud=baud, build_dir=None, skip_flash=True)
        slot.link = open_link(url, baud)
        board = MlperfBoard(slot.link, timeout_s=slot.profile.timeout_s, name=slot.device, baud=baud,
                            expected_model_id=self.options["mlperf_model_id"], flash=flash)
        board.hello()  # it speaks MLPerf Tiny's API, at this baud, before any beat is sent
        board.selftest(self.models[0].data)  # and runs a beat end to end: a refusal or garbage ends it here
        return board

    def close(self) -> None:
        if self.farm is not None:
            self.farm.join(timeout=1.0)
        for slot in self.slots:
            try:
                if slot.board is not None:
                    slot.board.close()  # and its link
                elif slot.link is not None:
                    slot.link.close()
            finally:
                if slot.virtual is not None:
                    slot.virtual.stop()
                if slot.place is not None:
                    slot.place.stop()  # releases the labgrid place, also after a failure or Ctrl-C
                    slot.place = None
                for alt_board, alt_virtual in slot.alt.values():
                    alt_board.close()
                    alt_virtual.stop()
                slot.alt.clear()

    def _kernels_board(self, slot: DeviceSlot, build: str):
        """A board running the `build` kernels firmware, and what to do when its run is over.

        Virtual: a second virtual board whose cycle estimates use that build's cost constants, kept for the
        session. Real: the slot's link is closed, the other build flashed (prepare_board), opened and checked;
        closed again after the run, so the next case flashes the profile's build back."""
        from .bench import kernels

        profile = slot.profile
        baud = self.options["baud"] or profile.baud
        window = self.options["window"] or profile.window
        cost = kernels.virtual_cost_profile(build, profile.kernels) if slot.device == "virtual" else None
        if slot.device == "virtual":
            if build not in slot.alt:
                from .boards.virtual import VirtualBoard

                virtual = VirtualBoard(str(profile.path), cost_profile=cost,
                                       throttle_baud=baud if self.options["throttle"] else None)
                link = open_link(virtual.start(), baud)
                board = Board(link, timeout_s=profile.timeout_s, window=window, name=f"{slot.device}[{build}]")
                slot.alt[build] = (board, virtual)
            return slot.alt[build][0], cost, lambda: None
        from .boards.device import prepare_board

        if slot.board is not None:
            slot.board.close()
            slot.board = slot.link = None
        url = prepare_board(slot.device, profile, baud=baud, build_dir=None, skip_flash=False, kernels=build)
        link = open_link(url, baud)
        board = Board(link, timeout_s=profile.timeout_s, window=window, name=f"{slot.device}[{build}]")
        check_board(profile, board.hello(), slot.device, kernels=build)
        return board, cost, board.close

    def _side_by_side(self, result: Result, model: Model, slot: DeviceSlot, ref, cross, progress) -> None:
        """--kernels both: the same model and beats on the other build; both verdicts count."""
        from .bench import kernels

        build = kernels.other(slot.profile.kernels)
        board, cost, done = self._kernels_board(slot, build)
        try:
            other = bench.run(board, model, slot.profile, slot.device, self.spec, ref, cross, on_progress=progress)
        finally:
            done()
        other.provenance["kernels"] = kernels.label(other, build, cost)
        runs = {slot.profile.kernels: result, build: other}
        result.kernels = kernels.compare(slot.profile.kernels, runs,
                                         {k: getattr(r, "beat_cycles", []) for k, r in runs.items()}, self.spec.warmup)
        result.kernels["builds"][build]["per_op"] = other.per_op
        if other.status != "pass" and result.status == "pass":
            result.status = other.status
            result.partial = other.partial
            result.failure = dict(other.failure or {}, message=f"[{build} kernels build] {other.failure_line}")

    # -- running ----------------------------------------------------------------------------------------
    def references(self, model: Model):
        """The reference and the cross-check interpreter for `model`, behind the disk cache when it is on."""
        cross_name = "tflm" if self.reference != "tflm" else "tflite-ref"
        refs = [make_reference(name, model.data, arena_size=1 << 20) for name in (self.reference, cross_name)]
        if self.reference_cache is not None:
            refs = [refcache.CachedReference(r, model.sha256, self.reference_cache) for r in refs]
        return refs[0], refs[1]

    def run(self, model: Model, slot: DeviceSlot, progress) -> Result:
        result, _ = self._run_one(model, slot, None, progress)
        return self._gate_and_keep(result, model, slot.profile)

    def _run_one(self, model: Model, slot: DeviceSlot, shard: tuple[int, int] | None, progress=None):
        """One bench run on one board (a shard of the beats when given) → (Result, bench.Shard | None)."""
        board = self.board(slot)
        ref, cross = self.references(model)
        spec = self.spec if shard is None else dataclasses.replace(self.spec, shard=shard)
        states: list = []
        result = bench.run(board, model, slot.profile, slot.label, spec, ref, cross, on_progress=progress,
                           shard_out=states)
        result.provenance["board"] = board_provenance(slot, board)
        if slot.protocol == "hil":
            from .bench import kernels

            result.provenance["kernels"] = kernels.label(result, slot.profile.kernels)  # results name the kernels
            if self.options["kernels"] == "both":
                self._side_by_side(result, model, slot, ref, cross, progress)
        if self.options["latency_rule"] == "mlperf-tiny" and result.status == "pass":
            try:
                result.latency["mlperf_tiny"] = perfrule.measure(board, model, self.spec,
                                                                 min_window_s=self.options["mlperf_window_s"])
            except HarnessError as err:
                result.set_failure(err)
        if self.reference_cache is not None:
            result.provenance["reference_cache"] = {"dir": str(self.reference_cache),
                                                    "hits": ref.hits + cross.hits,
                                                    "misses": ref.misses + cross.misses}
        return result, states[0] if states else None

    def _gate_and_keep(self, result: Result, model: Model, profile: Profile) -> Result:
        self._gate(result, model, profile)
        self.results.append(result)
        return result

    def _gate(self, result: Result, model: Model, profile: Profile) -> None:
        """Outcomes against the baseline (or, for a candidate, against the committed model of this run)."""
        committed_name = self.candidates.get(model.name)
        if committed_name is not None:
            # On a farm the two may have run on different boards of the profile (--spread models/beats).
            committed = next((r for r in self.results if r.model == committed_name and
                              (r.device == result.device or self.spread != "each")), None)
            outcomes = gate.compare_candidate(result, committed, alpha=self.gate_alpha)
            gate.apply(result, outcomes, mode="warn", candidate=True)
            return
        baseline = gate.load_baseline(self.baseline_dir / f"{profile.name}.json")
        outcomes = gate.check(result, baseline, alpha=self.gate_alpha)
        if self.update_baseline:
            result.gate = [o.to_dict() for o in outcomes]  # reported, not enforced: this run is being accepted
        else:
            # Noisy beats are not the beats a baseline was taken on (their fingerprint differs): the accuracy
            # figures come out not_compared, which a --noise run reports but never fails on.
            gate.apply(result, outcomes, mode="warn" if self.spec.noise else self.gate_mode)


def _per_op_beat(text: str) -> int | None:
    if str(text).lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"--per-op-beat '{text}' is not a beat number", "give 0, 1, ... or 'none'", code="HIL103")
    return value


def _device_key(device: str) -> str | None:
    """What identifies a board: a local port's real path, a URL or labgrid place; None for boards we start."""
    if device == "virtual":
        return None
    if "://" in device or device.startswith(places.PREFIX):
        return device.split("?")[0].lower()
    return os.path.realpath(device)


def _expand_devices(devices: list[str], target: str | None) -> list[str]:
    """--device as given, `auto` replaced by every port whose boot ROM reports the profile's chip; the same
    board named twice (a by-id link and its tty, say) is refused before anything runs."""
    out: list[str] = []
    for device in devices:
        if device == "auto":
            from .boards.flash import autodetect_ports  # probes the USB serial ports with esptool

            out += autodetect_ports(load_profile(target or "esp32").chip)
        else:
            out.append(device)
    seen: dict[str, str] = {}
    for device in out:
        key = _device_key(device)
        if key is None:
            continue
        if key in seen:
            same = f"'{device}'" if seen[key] == device else f"'{seen[key]}' and '{device}'"
            raise ConfigError(f"--device names the same board twice: {same} ({key})",
                              "give each board once; for several virtual boards repeat --device virtual",
                              code="HIL133")
        seen[key] = device
    return out


def _check_spread(opt, slots: list[DeviceSlot]) -> None:
    if len(slots) < 2 or opt.spread != "beats":
        return
    profiles = {s.profile.name for s in slots}
    if len(profiles) > 1:
        raise ConfigError(f"--spread beats needs boards of one profile, got {', '.join(sorted(profiles))}",
                          "give one --target for all boards, or use --spread each / models", code="HIL134")
    if opt.noise_sweep:
        raise ConfigError("--spread beats with --noise-sweep", "run the sweep with --spread each or models",
                          code="HIL134")


def board_provenance(slot: DeviceSlot, board: Board) -> dict:
    """Which board produced a Result: port, chip, USB serial number (local USB ports), firmware build."""
    hello = getattr(board, "last_hello", None)
    info = {"port": slot.device, "chip": getattr(hello, "chip", None),
            "firmware_build": getattr(hello, "build_hash", None)}
    if slot.device != "virtual" and "://" not in slot.device:
        try:
            import serial.tools.list_ports

            real = os.path.realpath(slot.device)
            for port in serial.tools.list_ports.comports():
                if os.path.realpath(port.device) == real and port.serial_number:
                    info["usb_serial"] = port.serial_number
        except Exception:  # noqa: BLE001 - provenance must never fail a run
            pass
    if slot.label != slot.device:
        info["label"] = slot.label
    if slot.place is not None and slot.place.power_cycles:
        info["power_cycles"] = slot.place.power_cycles  # revived through the labgrid place's power switch
    return info


def farm_not_run(reason: str) -> Exception:
    return _NotRun(reason)


class _NotRun(Exception):
    pass


def _parse_window(text: str) -> dict:
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise ConfigError(f"--model-window '{text}' is not BEFORE:AFTER[:DECIMATE[:NORMALIZE]]",
                          "e.g. --model-window 374:374:4:beat_zscore")
    try:
        window = {"before": int(parts[0]), "after": int(parts[1])}
        if len(parts) > 2:
            window["decimate"] = int(parts[2])
    except ValueError:
        raise ConfigError(f"--model-window '{text}': BEFORE, AFTER and DECIMATE must be integers",
                          "e.g. --model-window 374:374:4:beat_zscore") from None
    if len(parts) > 3:
        if parts[3] not in data.NORMALIZATIONS:
            raise ConfigError(f"--model-window '{text}': normalization '{parts[3]}' is not one of "
                              f"{', '.join(data.NORMALIZATIONS)}", "use one of those names (models/README.md "
                              "says what each does)", code="HIL127")
        window["normalize"] = parts[3]
    return window


def _with_candidate(models: list[Model], path: Path) -> tuple[list[Model], dict]:
    """Insert the candidate right after the one model it replaces; it inherits that model's metadata
    (window, labels, task, threshold) unless it has its own sidecar YAML."""
    if len(models) != 1:
        raise ConfigError(f"--candidate {path} needs exactly one model to compare with, got {len(models)}",
                          "name it: --models cnn1d_beat (or --model PATH)", code="HIL131")
    (base,) = models
    if path.with_suffix(".yaml").is_file():
        candidate = load_user_model(path)
    else:
        meta = {"task": base.task, "labels": list(base.labels) or None, "label_map": dict(base.label_map),
                "window": dataclasses.asdict(base.window), "anomaly": base.anomaly}
        candidate = load_user_model(path, overrides=meta)
    candidate = dataclasses.replace(candidate, name=f"{base.name}+candidate")
    return [base, candidate], {candidate.name: base.name}


def _load_models(opt) -> list[Model]:
    models: list[Model] = []
    if opt.model:
        overrides: dict = {}
        if opt.model_window:
            overrides["window"] = _parse_window(opt.model_window)
        if opt.model_labels:
            overrides["labels"] = [s.strip() for s in opt.model_labels.split(",") if s.strip()]
        if opt.model_task:
            overrides["task"] = opt.model_task
        if getattr(opt, "model_threshold", None) is not None:
            overrides["anomaly"] = {"threshold": opt.model_threshold}
        models += [load_user_model(Path(p), overrides=overrides) for p in opt.model]
    if opt.models or not opt.model:
        names = [n.strip() for n in opt.models.split(",")] if opt.models else None
        models += load_registry(names=names)
    return models


# -- pytest hooks -----------------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: a hardware-in-the-loop benchmark case")


def _session(config: pytest.Config) -> HilSession | None:
    """The HIL session if one was built (HIL cases were collected and the options are valid)."""
    return config.stash.get(_SESSION, None)


def _build_session(config: pytest.Config) -> HilSession | None:
    """Build the session once, the first time HIL cases are collected; a user mistake is kept as one line
    for pytest_collection_finish, which ends the run before anything runs or is written."""
    if _SESSION not in config.stash and _SETUP_ERROR not in config.stash:
        try:
            config.stash[_SESSION] = HilSession.from_config(config)
        except HarnessError as err:
            config.stash[_SETUP_ERROR] = str(err)
    return _session(config)


_SETUP_FAILED_ID = "hil-setup-failed"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_case" not in metafunc.fixturenames:
        return
    hil = _build_session(metafunc.config)
    if hil is None:  # one placeholder case, so that pytest_collection_finish sees HIL cases were wanted
        metafunc.parametrize("hil_case", [None], ids=[_SETUP_FAILED_ID])
        return
    cases = hil.cases()
    metafunc.parametrize("hil_case", cases, ids=[hil.case_id(c) for c in cases])


def pytest_collection_finish(session: pytest.Session) -> None:
    error = session.config.stash.get(_SETUP_ERROR, None)
    if error is None:
        return
    # Only when HIL cases are still selected (-k / --deselect may have left only unit tests).
    if any("hil_case" in getattr(item, "fixturenames", ()) for item in session.items):
        raise pytest.UsageError(error)


@pytest.fixture(scope="session")
def hil(request: pytest.FixtureRequest) -> HilSession:
    session = _session(request.config)
    if session is None:
        pytest.fail("the HIL session was not built: no HIL case was collected", pytrace=False)
    return session


class _ProgressLine:
    """Live progress in the terminal: overwritten in place on a TTY, a line every 10 s in CI logs."""

    def __init__(self, config: pytest.Config):
        self.reporter = config.pluginmanager.getplugin("terminalreporter")
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.last_line = 0.0
        self.tty = bool(getattr(self.reporter, "isatty", False))

    def __call__(self, p: bench.Progress) -> None:
        if not self.reporter or self.reporter.verbosity < 0:
            return
        text = (f"{p.model}@{p.device}: {p.done}/{p.total} beats, {p.beats_per_s:,.0f} beats/s (host wall), "
                f"{p.mismatches} mismatches")
        now = time.monotonic()
        with self.capture.global_and_fixture_disabled() if self.capture else contextlib.nullcontext():
            if self.tty:
                self.reporter.rewrite("    " + text, erase=True)
            elif now - self.last_line > 10 or p.done == p.total:
                self.last_line = now
                self.reporter.write_line("    " + text)

    def done(self) -> None:
        if self.tty and self.reporter:
            self.reporter.rewrite("", erase=True)


def run_case(hil: HilSession, case, request: pytest.FixtureRequest, record_property) -> Result:
    """Run one (model, device) case and turn its verdict into a one-line pytest outcome."""
    model, slot = case
    if len(hil.slots) > 1:
        return _run_farm_case(hil, case, record_property)
    try:
        hil.board(slot)
    except HarnessError as err:
        # The board cannot be reached or is not ours: a set-up mistake, so one line and no report.
        hil.aborted = str(err)
        pytest.exit(str(err), returncode=3)
    progress = _ProgressLine(request.config)
    try:
        result = hil.run(model, slot, progress)
    except HarnessError as err:  # e.g. a host interpreter that cannot load the model: one line, no traceback
        pytest.fail(str(err), pytrace=False)
    finally:
        progress.done()
    for name, value in result.figures().items():
        record_property(name, value)
    if result.status != "pass":
        pytest.fail(result.failure["message"], pytrace=False)
    return result


def _run_farm_case(hil: HilSession, case, record_property) -> Result:
    """A case on the farm (several boards in parallel): wait for its work, then the same one-line verdict."""
    model, _ = case
    try:
        result = hil.farm_result(case)
    except HarnessError as err:  # the work itself failed (a host interpreter refused the model): one line
        pytest.fail(str(err), pytrace=False)
    except _NotRun as exc:
        if hil.farm.all_quarantined() and not hil.results:
            # No board could run anything: like an unreachable single board, one line and no report.
            hil.aborted = (f"HIL260 no board usable, all quarantined: {hil.farm.summary()} -- fix: check the "
                           f"boards' cables and ports, then run again")
            pytest.exit(hil.aborted, returncode=3)
        pytest.fail(f"HIL260 {hil.case_id(case)} not run: {exc}", pytrace=False)
    for name, value in result.figures().items():
        record_property(name, value)
    if result.status != "pass":
        pytest.fail(result.failure["message"], pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    hil = _session(session.config)
    if hil is None:
        return
    try:
        if hil.aborted or not hil.results:
            return
        info = {"exitstatus": int(exitstatus), "reference": hil.reference,
                "records": list(hil.spec.records), "data_dir": str(hil.spec.mitdb_dir), "cwd": os.getcwd()}
        if len(hil.slots) > 1:
            info["boards"] = [s.label for s in hil.slots]
            info["spread"] = hil.spread
            info["quarantined"] = [{"device": q.device, "reason": q.reason}
                                   for q in (hil.farm.quarantined if hil.farm else [])]
        if int(exitstatus) == pytest.ExitCode.INTERRUPTED:
            info["partial"] = (f"the session was interrupted after {len(hil.results)} of {len(hil.cases())} "
                               "model × board runs")
        facts = manifest.build(hil.results, build_dirs={
            s.device: hil.options["build_dir"] or REPO / "build" / s.profile.chip for s in hil.slots})
        report.write_results_json(hil.out_dir / "results.json", hil.results, session=info, manifest=facts)
        report.write_junit(hil.out_dir / "junit.xml", hil.results)
        if hil.candidates:
            report.atomic_write(hil.out_dir / "compare.md", lambda fh: fh.write(
                compare.markdown(hil.results, hil.candidates).encode("utf-8")))
        history = session.config.option.history
        hil.report_notes = htmlreport.finish_run(
            hil.out_dir, hil.results, manifest=facts, session=info, partial_note=info.get("partial"),
            history_path=None if (history or "").lower() == "off" else Path(history or hil.out_dir / "history.sqlite"))
        if hil.update_baseline:
            for slot in hil.slots:
                mine = [r for r in hil.results if r.profile == slot.profile.name and r.model not in hil.candidates]
                if mine:
                    lines, refused = gate.update_baseline(hil.baseline_dir / f"{slot.profile.name}.json", mine)
                    hil.baseline_lines += lines + refused
                    if refused and session.exitstatus == 0:
                        session.exitstatus = 1
        if hil.options.get("calibrate"):
            from .bench import calibrate

            for slot in hil.slots:
                if slot.device == "virtual":
                    continue
                try:
                    hil.report_notes.append(calibrate.calibrate(slot.profile, hil.results, slot.device))
                except HarnessError as err:
                    hil.report_notes.append(str(err))
                    if session.exitstatus == 0:
                        session.exitstatus = 1
    finally:
        hil.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    hil = _session(config)
    if hil is None or not hil.results or hil.aborted:
        return
    terminalreporter.section("HIL bench")
    for line in report.format_table(hil.results).splitlines():
        terminalreporter.write_line(line)
    for line in report.format_realtime(hil.results) + report.format_noise(hil.results) + perfrule.lines(hil.results):
        terminalreporter.write_line(line)
    if hil.farm is not None:
        for q in hil.farm.quarantined:
            terminalreporter.write_line(f"quarantined: {q.device} ({q.reason}); the run went on without it")
    from .bench import kernels, perop  # per-op, health, cycles-vs-wall and kernels side by side, one line each

    for line in perop.board_lines(hil.results) + kernels.lines(hil.results) + kernels.evidence_lines(hil.results):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"results: {hil.out_dir / 'results.json'}   junit: {hil.out_dir / 'junit.xml'}   "
                                f"report: {hil.out_dir / 'report.html'}   summary: {hil.out_dir / 'summary.md'}")
    gate_lines = [line for r in hil.results if r.model not in hil.candidates for line in gate.summary_lines(r)]
    if gate_lines:
        mode = "strict: not compared fails" if hil.gate_mode == "strict" else "warn: not compared is a warning"
        terminalreporter.write_line(f"gate ({mode}); every outcome that is not a plain pass:")
        for line in gate_lines:
            terminalreporter.write_line("  " + line)
    if hil.candidates:
        terminalreporter.write_line("")
        for line in compare.text(hil.results, hil.candidates).splitlines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"paired comparison as Markdown: {hil.out_dir / 'compare.md'}")
    for note in hil.report_notes:
        terminalreporter.write_line(note, yellow=True)
    if hil.update_baseline:
        terminalreporter.write_line(f"--update-baseline ({hil.baseline_dir}):")
        for line in hil.baseline_lines or ["nothing written"]:
            terminalreporter.write_line("  " + line)
