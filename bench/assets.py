"""The assets group (issue 14): a 50 MiB upload through Cylindria, and its memory meanwhile.

- Throughput: `POST /assets?name=...` with a raw body of random bytes (new ones every round,
  so never a duplicate), one client on one keep-alive connection (http.client in this
  process), timed from the first byte sent to the 201 read. Baseline: writing the same bytes
  to a file on the same disk in this process (1 MiB writes, no fsync, as Cylindria writes).
  Stack floor: a do-nothing Flask app under waitress (this module run as a process, below)
  reading the same body to its end. Rounds alternate ABBA; the asset is deleted after its
  round (not timed), so every round starts from the same data dir. A first round of the same
  size warms every side up (the first 50 MiB write costs several times the next ones): its
  times are left out, its RSS readings kept. waitress takes the whole
  body (into a temporary file beyond 512 KiB) before the app is called: the app's own share
  of each upload is read from Cylindria's access log.
- Memory: Cylindria's RSS read just before each upload, sampled every 2 ms from the first
  byte sent to the answer (on Linux also its exact peak: VmHWM, reset through
  /proc/<pid>/clear_refs just before), and 0.5 s after the answer. The figure is the worst
  round's peak over its "before", as a share of the asset: an upload must stream to disk,
  not be held whole.

python -m bench.assets --port P [--threads 16]   the floor app on its own
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from flask import Flask, jsonify, request
from waitress import serve

from bench import procs
from bench.core import Bench, Figure
from bench.procs import key_headers
from bench.stats import median, spread

MIB = 1024 * 1024
SIZE_MIB = {"full": 50, "quick": 5}  # the asset, by profile
CHUNK = MIB  # the baseline's writes and the floor's reads, as Cylindria's (comfy.inputs.assets.CHUNK)
SAMPLE_EVERY = 0.002  # seconds between RSS samples during an upload
SETTLE = 0.5  # seconds after the answer before "after" is read, as the store group does
RSS_LIMIT = 25.0  # per cent of the asset the peak may grow by
ACCESS = re.compile(r"POST /assets\?\S* 20[01] ([\d.]+)ms")  # Cylindria's access log: app time
ORDER = ("asset_upload_throughput", "asset_upload_rss")  # the rows of this group, in order
SIDES = ("baseline", "cylindria", "floor")
IN_BYTES = ("before", "peak", "after", "sampled_peak", "high_water")  # a round's RSS readings


def assets_figures(bench: Bench) -> list[Figure]:
    """Upload throughput against a disk write (and the stack floor), and RSS meanwhile."""
    size = SIZE_MIB[bench.profile.name] * MIB
    fake = bench.fakes(1)[0]
    cyl = bench.server(procs.cylindria(fake.url, bench.data_dir("assets")))
    floor = bench.server(floor_app(bench.work_dir))
    with Uploader(cyl.port, key_headers()) as to_cyl, Uploader(floor.port) as to_floor:
        sides = Sides(bench.work_dir / "assets-baseline.bin", cyl, to_cyl, to_floor)
        for index in range(-1, bench.profile.rounds):  # round -1 warms up: times not kept
            sides.round(index, os.urandom(size))  # new bytes every round: never a duplicate
    cyl.stop()
    floor.stop()
    app_ms = [float(ms) for ms in ACCESS.findall(cyl.log())][1:]  # the warm-up round's left out
    return [throughput_figure(size, sides.seconds, sides.hashing, app_ms),
            rss_figure(size, sides.memory)]


@dataclass
class Sides:
    """The three sides of a round (the disk, Cylindria, the floor) and what they measured."""

    target: Path  # the baseline's file
    cyl: procs.ServerProcess
    to_cyl: "Uploader"
    to_floor: "Uploader"
    seconds: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    memory: list[dict] = field(default_factory=list)  # Cylindria's RSS readings, every round
    hashing: list[float] = field(default_factory=list)  # BLAKE3 alone over each round's bytes

    def round(self, index: int, data: bytes) -> None:
        """Every side once, ABBA; a negative index warms up (RSS kept, times not)."""
        times = {}
        for side in (SIDES if index % 2 == 0 else SIDES[::-1]):
            times[side] = self.upload(side, data, f"round-{index}.bin")
        if index >= 0:
            self.hashing.append(hash_seconds(data))
            for side, taken in times.items():
                self.seconds[side].append(taken)
        self.memory[-1]["warmup"] = index < 0

    def upload(self, side: str, data: bytes, name: str) -> float:
        """One side's timed upload (the baseline's: the write to disk)."""
        if side == "baseline":
            return write_file(self.target, data)
        if side == "floor":
            return floor_round(self.to_floor, data, name)
        taken, reading = cylindria_round(self.cyl, self.to_cyl, data, name)
        self.memory.append(reading)
        return taken


def cylindria_round(cyl: procs.ServerProcess, uploader: "Uploader", data: bytes,
                    name: str) -> tuple[float, dict]:
    """One timed upload to Cylindria with its RSS before, during and after (bytes)."""
    before = cyl.rss()
    with RssSampler(cyl.pid) as sampler:
        taken, asset = uploader.upload(data, name)
    if asset["size_bytes"] != len(data) or not asset.get("created_new"):
        raise RuntimeError(f"the upload was not stored as a new {len(data)}-byte asset: {asset}")
    time.sleep(SETTLE)
    after = cyl.rss()
    uploader.delete(asset)
    peak = max([before, after, *sampler.samples, sampler.high_water or 0])
    return taken, {"before": before, "peak": peak, "after": after,
                   "sampled_peak": max(sampler.samples, default=before),
                   "high_water": sampler.high_water, "samples": len(sampler.samples)}


def floor_round(uploader: "Uploader", data: bytes, name: str) -> float:
    """One timed upload to the floor, which must have read every byte."""
    taken, answer = uploader.upload(data, name)
    if answer["size_bytes"] != len(data):
        raise RuntimeError(f"the floor read {answer['size_bytes']} of {len(data)} bytes")
    return taken


class Uploader:
    """One client on one keep-alive HTTP/1.1 connection (http.client), raw-body uploads."""

    def __init__(self, port: int, headers: dict | None = None, timeout: float = 120.0):
        self.conn = http.client.HTTPConnection(procs.HOST, port, timeout=timeout)
        self.headers = headers or {}

    def upload(self, data: bytes, name: str) -> tuple[float, dict]:
        """POST /assets?name=... with `data` as the body: (seconds to the answer read, answer)."""
        headers = {**self.headers, "Content-Type": "application/octet-stream"}
        began = time.perf_counter()
        self.conn.request("POST", f"/assets?name={name}", body=data, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        taken = time.perf_counter() - began
        if response.status not in (200, 201):
            raise RuntimeError(f"POST /assets answered {response.status}: {body[:300]!r}")
        if response.will_close:  # the next upload would pay a new connection
            raise RuntimeError("the server closed the keep-alive connection after an upload")
        return taken, json.loads(body)

    def delete(self, asset: dict) -> None:
        """DELETE /assets/<id>: the next round starts from the same data dir."""
        self.conn.request("DELETE", f"/assets/{asset['id']}", headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"DELETE /assets answered {response.status}: {body[:300]!r}")

    def __enter__(self) -> "Uploader":
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()


class RssSampler:
    """Reads a process's RSS every SAMPLE_EVERY seconds on a thread of its own while the `with`
    block runs; on Linux also its exact peak (VmHWM, reset on entry through clear_refs)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[int] = []
        self.high_water: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.loop, name=f"rss-{pid}", daemon=True)
        self._can_reset = False

    def sample_once(self) -> None:
        """One RSS read."""
        self.samples.append(procs.rss_bytes(self.pid))

    def loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(SAMPLE_EVERY)

    def start(self) -> None:
        """Reset the high-water mark, then sample until stop()."""
        self._can_reset = reset_high_water(self.pid)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling; read the high-water mark (where it could be reset)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the RSS sampler of process {self.pid} would not stop")
        if self._can_reset:
            self.high_water = high_water(self.pid)

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def reset_high_water(pid: int) -> bool:
    """Set a process's VmHWM to its current RSS (Linux 4.0+); False where that is not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return high_water(pid) is not None
    except OSError:
        return False


def high_water(pid: int) -> int | None:
    """A process's peak RSS since its last reset (VmHWM), in bytes; None if not shown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_file(path: Path, data: bytes) -> float:
    """The baseline: seconds to write `data` to a new file in CHUNK writes (no fsync, as
    Cylindria does not sync either); the file is removed afterwards, not timed."""
    view = memoryview(data)
    began = time.perf_counter()
    with open(path, "wb") as out:
        for start in range(0, len(view), CHUNK):
            out.write(view[start:start + CHUNK])
    taken = time.perf_counter() - began
    path.unlink()
    return taken


def hash_seconds(data: bytes) -> float:
    """What BLAKE3 alone takes over `data` in CHUNK updates, as Cylindria hashes (for the JSON)."""
    view = memoryview(data)
    hasher = blake3.blake3()
    began = time.perf_counter()
    for start in range(0, len(view), CHUNK):
        hasher.update(view[start:start + CHUNK])
    hasher.digest()
    return time.perf_counter() - began


def throughput_figure(size: int, seconds: dict[str, list[float]], hashing: list[float],
                      app_ms: list[float]) -> Figure:
    """Cylindria's MiB/s over the disk write's, pooled over rounds (total bytes / total time);
    `app_ms`: each upload's time in Cylindria's app (its access log), after waitress had the
    whole body."""
    rate = {side: size * len(times) / sum(times) / MIB for side, times in seconds.items()}
    per_round = [b / c for b, c in zip(seconds["baseline"], seconds["cylindria"])]
    mib = size // MIB
    return Figure(
        "asset_upload_throughput", f"POST /assets, {mib} MiB raw body, 1 keep-alive client",
        f"{rate['baseline']:.0f} MiB/s to disk", f"{rate['cylindria']:.0f} MiB/s",
        rate["cylindria"] / rate["baseline"], "x", ">=", None,
        {"asset_mib": mib, "baseline_mib_s": rate["baseline"], "cylindria_mib_s": rate["cylindria"],
         "floor_mib_s": rate["floor"], "seconds": seconds,
         "cylindria_p50_s": median(seconds["cylindria"]), "cylindria_app_ms": app_ms,
         "cylindria_app_share": sum(app_ms) / 1000 / sum(seconds["cylindria"]),
         "round_ratios": per_round, "round_spread": spread(per_round),
         "floor_ratio": rate["floor"] / rate["baseline"],
         "cylindria_over_floor": rate["cylindria"] / rate["floor"],
         "blake3_mib_s": size * len(hashing) / sum(hashing) / MIB,
         "baseline_is": "the same bytes written to a file in the bench's work dir (same disk "
                        "as Cylindria's data dir and waitress's temporary files), 1 MiB writes, "
                        "no fsync; floor: a do-nothing Flask app under waitress reading the body"})


def rss_figure(size: int, memory: list[dict]) -> Figure:
    """The worst round's peak RSS growth over its "before", as a share of the asset (the
    warm-up round included: a fresh process's first upload is the one most likely to grow)."""
    worst = max(memory, key=lambda r: r["peak"] - r["before"])
    growth = worst["peak"] - worst["before"]
    retained = worst["after"] - worst["before"]
    mib = size // MIB
    return Figure(
        "asset_upload_rss", f"Cylindria's RSS while a {mib} MiB asset streams in (peak)",
        f"{worst['before'] / MIB:.1f} MiB before",
        f"+{growth / MIB:.1f} MiB peak, {retained / MIB:+.1f} after",
        100.0 * growth / size, "% of asset", "<=", RSS_LIMIT,
        {"asset_mib": mib, "growth_mib": growth / MIB, "growth_share": growth / size,
         "after_minus_before_mib": retained / MIB,
         "all_rounds_growth_mib": [(r["peak"] - r["before"]) / MIB for r in memory],
         "first_before_to_last_after_mib": (memory[-1]["after"] - memory[0]["before"]) / MIB,
         "rounds_mib": [{k: (v / MIB if k in IN_BYTES and v is not None else v)
                         for k, v in r.items()} for r in memory],
         "peak_is": "max of RSS samples every 2 ms and (Linux) VmHWM reset just before the upload"})


# -- the stack floor: Flask under waitress, reading an upload and nothing else -------------------

def floor_app(work_dir: Path, threads: int = 16) -> procs.ServerProcess:
    """This module as a server process (the floor), not yet started."""
    port = procs.free_ports(1)
    args = [sys.executable, "-m", "bench.assets", "--port", str(port), "--threads", str(threads)]
    return procs.ServerProcess(args, port, Path(work_dir) / f"assets-floor-{port}.log")


def create_app():
    """POST /assets reads the body to its end in CHUNK reads and answers its size; GET /health."""
    app = Flask("assets-floor")

    @app.post("/assets")
    def upload():
        size = 0
        while chunk := request.stream.read(CHUNK):
            size += len(chunk)
        return jsonify({"size_bytes": size}), 201

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.assets")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    serve(create_app(), host=procs.HOST, port=args.port, threads=args.threads, ident="floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
