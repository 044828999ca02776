"""Figures of many boards in one run (`make bench-farm`): measured and printed, never asserted in tests.

1. Aggregate line rate: 4 virtual boards throttled like a UART at 921600 baud, one thread each (as the
   farm runs them), against 4 × the one-board line-rate bound (harness/benchmarks/speed.py's: baud / 10 over the
   larger frame of a beat). Goal: aggregate ≥ 0.9 × 4 × bound.
2. Host CPU per verified beat (this process: harness, link handling and the host references; the virtual
   board runs in its own process and is not counted), with a cold and with a warm reference cache, and the
   number of boards one core could keep at line rate from it. Goal: ≥ 16 boards per core with the cache.
3. The full MIT-BIH database sharded over 4 throttled virtual boards (`--spread beats`) against one board,
   both through the pytest plugin: wall time of each and whether the merged figures are identical. The
   reference outputs are put in the cache first, so neither timed run pays for them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..bench import run as bench, data, refcache
from ..link import protocol
from ..boards.board import Board
from ..bench.model import load_registry
from ..boards.profiles import load_profile
from ..bench.reference import make_reference
from ..link.transport import open_link
from ..boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent.parent


def line_rate_bound(model, baud: int) -> float:
    x = bytes(model.input.nbytes)
    infer = len(protocol.encode_frame(protocol.MsgType.INFER, 1, x))
    result = len(protocol.encode_frame(protocol.MsgType.RESULT, 1, bytes(20 + model.output.nbytes)))
    return (baud / 10) / max(infer, result)


def aggregate(model, rows: list[bytes], boards: int, baud: int, beats: int, window: int) -> dict:
    vbs = [VirtualBoard("virtual", throttle_baud=baud) for _ in range(boards)]
    links = []
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    try:
        for vb in vbs:
            vb.start()
        handles = []
        for vb in vbs:
            link = open_link(vb.url, baud)
            links.append(link)
            board = Board(link, timeout_s=10, window=window)
            board.ensure_model(model.data)
            handles.append(board)
        done = [0] * boards
        errors: list[BaseException] = []

        def stream(i: int, board: Board) -> None:
            try:
                board.infer_stream((rows[k % len(rows)] for k in range(beats)), total=beats,
                                   on_result=lambda _i, _inf: None)
                done[i] = beats
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(i, b)) for i, b in enumerate(handles)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
    finally:
        for link in links:
            link.close()
        for vb in vbs:
            vb.stop()
    bound = line_rate_bound(model, baud)
    achieved = sum(done) / wall
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the virtual boards, reaped by stop()
    board_cpu = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return {"bound_one": bound, "achieved": achieved, "ratio": achieved / (boards * bound), "wall_s": wall,
            "board_cpu_s": board_cpu, "load": max(load0, os.getloadavg()[0])}


def cpu_per_beat(model, spec: bench.BenchSpec, cache_dir: Path | None) -> dict:
    """Process CPU µs per verified beat of one bench run on an unthrottled virtual board."""
    profile = load_profile("virtual")
    bench.forget_records()  # each measured run reads its records itself, as a fresh CI run does
    with VirtualBoard("virtual") as vb:
        board = Board(open_link(vb.url, 921600), timeout_s=10, window=profile.window)
        try:
            board.ensure_model(model.data)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            refs = [make_reference(n, model.data) for n in ("tflite-ref", "tflm")]
            if cache_dir is not None:
                refs = [refcache.CachedReference(r, model.sha256, cache_dir) for r in refs]
            result = bench.run(board, model, profile, "virtual", spec, refs[0], refs[1])
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            board.close()
    verified = result.beats.get("verified", 0)
    return {"verified": verified, "cpu_us": 1e6 * cpu / max(verified, 1), "wall_s": wall,
            "status": result.status}


def _pytest(out: Path, mitdb: str, devices: int, baud: int, model: str, cache: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", model, "--mitdb", mitdb,
           "--records", "all", "--virtual-throttle", "--baud", str(baud), "--out", str(out),
           "--reference-cache", str(cache)]
    cmd += ["--device", "virtual"] * devices + (["--spread", "beats"] if devices > 1 else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench with {devices} board(s) failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return wall, json.loads((out / "results.json").read_text())["results"][0]


def warm_cache(model, mitdb: Path, cache: Path) -> None:
    """Compute every record's reference outputs into the cache, so neither timed run pays for them."""
    refs = [refcache.CachedReference(make_reference(n, model.data), model.sha256, cache) for n in ("tflite-ref", "tflm")]
    for name in data.resolve_records("all"):
        windows = data.beat_windows(data.load_record(mitdb, name), model.window)
        x = data.quantize(windows.x, model.input.scale, model.input.zero_point)
        x = x.reshape((len(windows.beats),) + tuple(model.input.shape[1:]))
        for ref in refs:
            ref.run(x)


def full_database(mitdb: str, boards: int, baud: int, model: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="hil-farm-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "refcache"
        # Both runs stream against the same, already computed references (the cache the farm shares).
        warm_cache(load_registry(names=[model])[0], Path(mitdb), cache)
        one_wall, one = _pytest(tmp_path / "one", mitdb, 1, baud, model, cache)
        many_wall, many = _pytest(tmp_path / "many", mitdb, boards, baud, model, cache)
    same = {key: one[key] == many[key] for key in ("beats", "accuracy", "per_beat")}
    same["bit_exact"] = all(one["bit_exact"][k] == many["bit_exact"][k]
                            for k in ("exact", "mismatching_beats", "max_abs_diff", "first_mismatch"))
    same["latency_cycles"] = one["latency"]["cycles"] == many["latency"]["cycles"]
    same["beat_set"] = one["provenance"]["beat_set"] == many["provenance"]["beat_set"]
    return {"beats": one["beats"]["verified"], "one_wall": one_wall, "many_wall": many_wall,
            "one_stream_s": one["throughput"]["wall_s"], "many_stream_s": many["throughput"]["wall_s"],
            "same": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.benchmarks.farm", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn1d_beat")
    ap.add_argument("--boards", type=int, default=4)
    ap.add_argument("--baud", type=int, default=921600)
    ap.add_argument("--beats", type=int, default=1500, help="beats per board for figure 1")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--mitdb", default=None, help="MIT-BIH directory for figure 3 (skipped without it)")
    ap.add_argument("--figures", default="1,2,3", help="which figures to measure, e.g. 3")
    args = ap.parse_args(argv)
    wanted = {int(f) for f in args.figures.split(",") if f.strip()}
    model = load_registry(names=[args.model])[0]
    windows = data.beat_windows(data.load_record(data.BUNDLED_DIR, "213"), model.window)
    x = data.quantize(windows.x, model.input.scale, model.input.zero_point).reshape(len(windows.beats), -1)
    rows = [r.tobytes() for r in x]
    print(f"model {model.name} ({model.size_bytes} B), {args.boards} virtual boards, {args.baud} baud")

    if wanted & {1, 2}:
        figures_1_2(model, rows, args, wanted)
    if 3 in wanted and args.mitdb:
        figure_3(args)
    return 0


def figures_1_2(model, rows, args, wanted) -> None:
    one = aggregate(model, rows, 1, args.baud, args.beats, args.window)
    ag = aggregate(model, rows, args.boards, args.baud, args.beats, args.window)
    goal = 0.9 * args.boards * ag["bound_one"]
    print(f"\n1. aggregate line rate, {args.boards} throttled boards in parallel (host wall; {os.cpu_count()} "
          f"host cores, each virtual board a process of its own)")
    print(f"   one-board bound {ag['bound_one']:.1f} beats/s; {args.boards} × bound {args.boards * ag['bound_one']:.1f}; "
          f"one board alone achieved {one['achieved']:.1f} beats/s (ratio {one['ratio']:.3f})")
    print(f"   achieved {ag['achieved']:.1f} beats/s, ratio to {args.boards} × bound {ag['ratio']:.3f}  "
          f"goal ≥ 0.9 ({goal:.1f} beats/s): {'met' if ag['ratio'] >= 0.9 else 'NOT met'}")
    print(f"   the {args.boards} virtual board processes used {ag['board_cpu_s']:.1f} CPU-s in {ag['wall_s']:.1f} s "
          f"({ag['board_cpu_s'] / ag['wall_s']:.2f} cores; one board alone {one['board_cpu_s'] / one['wall_s']:.2f}); "
          f"host load average {ag['load']:.1f} on {os.cpu_count()} cores")

    if 2 not in wanted:
        return
    spec = bench.BenchSpec(mitdb_dir=data.BUNDLED_DIR, records=data.resolve_records("bundled"))
    with tempfile.TemporaryDirectory(prefix="hil-refcache-") as tmp:
        cold = cpu_per_beat(model, spec, None)
        cpu_per_beat(model, spec, Path(tmp))          # fills the cache
        warm = cpu_per_beat(model, spec, Path(tmp))   # reads it
    bound = ag["bound_one"]
    print(f"\n2. host CPU per verified beat (this process: harness + references; {warm['verified']} beats, "
          f"bundled records, unthrottled board)")
    for name, fig in (("no reference cache", cold), ("warm reference cache", warm)):
        per_core = 1e6 / fig["cpu_us"] / bound
        print(f"   {name:21s} {fig['cpu_us']:8.1f} µs/beat → {per_core:5.1f} boards per core at "
              f"{bound:.0f} beats/s each")
    per_core = 1e6 / warm["cpu_us"] / bound
    print(f"   goal ≥ 16 boards per core with the cache: {'met' if per_core >= 16 else 'NOT met'} (CPU per beat "
          f"includes each run's fixed costs: reading and windowing the records, opening the interpreters)")



def figure_3(args) -> None:
    if args.mitdb:
        if not Path(args.mitdb).is_dir():
            print(f"\n3. skipped: no MIT-BIH database at {args.mitdb}")
            return
        fd = full_database(args.mitdb, args.boards, args.baud, args.model)
        print(f"\n3. full MIT-BIH ({fd['beats']} beats) over {args.boards} throttled boards (--spread beats) "
              f"vs one board (host wall; references precomputed into the shared cache)")
        print(f"   one board {fd['one_wall']:.0f} s (streaming {fd['one_stream_s']:.0f} s); {args.boards} boards "
              f"{fd['many_wall']:.0f} s (streaming {fd['many_stream_s']:.0f} s): speed-up "
              f"{fd['one_stream_s'] / fd['many_stream_s']:.2f}× streaming, {fd['one_wall'] / fd['many_wall']:.2f}× "
              f"whole run")
        print("   merged figures identical to one board: " + ", ".join(
            f"{k} {'yes' if v else 'NO'}" for k, v in fd["same"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
