"""Mutation fuzzing of chemgen's structure readers: real files, damaged, must give a record or a clear error.

Seeds are real files written from QM9 (qm9pack) and MP-20 (the shared data folder): multi-record SDF,
plain and extended XYZ, multi-block CIF, and structure CSVs. Each input is a seed with one to three
mutations (byte flips, truncation, duplicated, deleted or swapped lines, numbers replaced by special
tokens such as ``nan``, ``1e400`` or a huge atom count, inserted bytes), read by
`chemgen.io.read_records` in a worker process that has a memory limit and a per-input time limit.

An input passes when the reader returns records (structures or `StructureFileError` per record) or
raises one of chemgen's own errors, and every structure it accepts is finite and within the physical
limits of `chemgen.atoms`. Anything else is a failure: another exception (a crash), no answer within
the time limit (a hang, the worker is replaced), a dead worker (killed by the kernel), or an accepted
structure outside the limits (a violation).

    python tools/fuzz_readers.py --per-format 10000 --out runs/fuzz      # `make fuzz`
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import resource
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("sdf", "xyz", "extxyz", "cif", "csv")
EXTENSIONS = {"sdf": ".sdf", "xyz": ".xyz", "extxyz": ".extxyz", "cif": ".cif", "csv": ".csv"}
# Tokens that parsers and records must refuse or survive: non-finite values, overflowing exponents,
# absurd magnitudes and counts, signs and syntax that look numeric but are not.
SPECIAL_TOKENS = ("nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e309", "1e300", "-1e300", "1e-400",
                  "0", "-0", "999999999", "1000000000000", "-5", "-1", "2147483648", "1e", "--1", "0x1F", "",
                  "1.2.3", "1,5", "١٢")
WORKER_MEMORY_BYTES = 4 * 1024**3
NUMBER = re.compile(rb"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


# ---------------------------------------------------------------------------- seeds from real data
def seed_files(data_dir: str | os.PathLike | None = None, molecules: int = 24, crystals: int = 24,
               per_file: int = 3, seed: int = 0) -> dict[str, list[bytes]]:
    """Real files of every format, each holding ``per_file`` records: QM9 molecules (SDF, XYZ, extXYZ,
    CSV) and MP-20 crystals (CIF, extXYZ, CSV rows exactly as MP-20 ships them)."""
    import io as text_io

    import pandas as pd

    from chemgen import io as structure_io
    from chemgen.data.crystals import default_data_dir, iter_crystals
    from chemgen.data.qm9 import iter_qm9, read_qm9_frame

    qm9 = [s for _, s in iter_qm9(read_qm9_frame().sample(n=molecules, random_state=seed))]
    mp20 = pd.read_csv(Path(data_dir or default_data_dir()) / "mp_20" / "test.csv.gz").sample(n=crystals,
                                                                                               random_state=seed)
    cells = [s for _, s in iter_crystals("mp20", mp20, "test")]
    seeds: dict[str, list[bytes]] = {f: [] for f in FORMATS}

    def written(fmt: str, systems: list) -> bytes:
        handle = text_io.StringIO()
        structure_io.FORMATS[fmt].writer(handle, systems)
        return handle.getvalue().encode()

    for start in range(0, len(qm9), per_file):
        group = qm9[start:start + per_file]
        seeds["sdf"].append(written("sdf", group))
        seeds["xyz"].append("".join(f"{s.num_atoms}\n{s.smiles or ''}\n" + "".join(
            f"{sym} {x:.6f} {y:.6f} {z:.6f}\n" for sym, (x, y, z) in zip(s.symbols, s.pos)) for s in group).encode())
        seeds["extxyz"].append(written("extxyz", group))
        seeds["csv"].append(written("csv", group))
    for start in range(0, len(cells), per_file):
        rows = mp20.iloc[start:start + per_file]
        seeds["cif"].append("\n".join(rows["cif"]).encode())
        seeds["extxyz"].append(written("extxyz", cells[start:start + per_file]))
        seeds["csv"].append(rows.to_csv(index=False).encode())
    return seeds


# ---------------------------------------------------------------------------- mutations
def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [data]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def duplicate_line(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    return b"".join(lines[:i + 1] + [lines[i]] * rng.randint(1, 3) + lines[i + 1:])


def delete_line(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def swap_lines(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def special_number(data: bytes, rng: random.Random) -> bytes:
    numbers = list(NUMBER.finditer(data))
    if not numbers:
        return data
    match = rng.choice(numbers)
    return data[:match.start()] + rng.choice(SPECIAL_TOKENS).encode() + data[match.end():]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    junk = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))), b"\x00", b"\n", b"\r\n",
                       b"data_x\n", b"$$$$\n", b"loop_\n", b'"', b"'", b";\n", "é".encode()])
    return data[:at] + junk + data[at:]


MUTATIONS = (flip_bytes, truncate, duplicate_line, delete_line, swap_lines, special_number, special_number,
             insert_bytes)


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    applied = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(MUTATIONS)
        data = mutation(data, rng)
        applied.append(mutation.__name__)
    return data, applied


# ---------------------------------------------------------------------------- the limits an accepted record keeps
def limit_violation(system) -> str | None:  # noqa: ANN001 - an AtomicSystem
    """Why an accepted structure breaks the record's physical limits, checked here independently of the
    record's own checks; None when it keeps them."""
    from chemgen import atoms

    arrays = {"pos": system.pos, "cell": system.cell, "frac_coords": system.frac_coords}
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            return f"non-finite {name}"
    if not 1 <= system.num_atoms <= atoms.MAX_ATOMS:
        return f"{system.num_atoms} atoms"
    if np.abs(system.pos).max() > atoms.MAX_COORDINATE:
        return f"coordinate {np.abs(system.pos).max():.3g}"
    if system.pbc:
        lengths = np.linalg.norm(system.cell, axis=1)
        if lengths.min() < atoms.MIN_CELL_LENGTH or lengths.max() > atoms.MAX_CELL_LENGTH:
            return f"cell lengths {lengths}"
        if np.linalg.det(system.cell) <= 0:
            return "left-handed or flat cell"
    return None


# ---------------------------------------------------------------------------- the worker
def _worker(connection, memory_bytes: int) -> None:  # noqa: ANN001 - a multiprocessing Connection
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    from chemgen import io as structure_io
    from chemgen.errors import ChemgenError

    folder = Path(tempfile.mkdtemp(prefix="chemgen-fuzz-"))
    connection.send("ready")
    while True:
        job = connection.recv()
        if job is None:
            return
        fmt, data = job
        path = folder / f"input{EXTENSIONS[fmt]}"
        path.write_bytes(data)
        try:
            records = structure_io.read_records(path)
            accepted = [r for r in records if not isinstance(r, structure_io.StructureFileError)]
            violations = [v for v in map(limit_violation, accepted) if v]
            outcome = {"outcome": "violation" if violations else "read", "records": len(records),
                       "accepted": len(accepted), "detail": "; ".join(violations[:3])}
        except ChemgenError as err:
            outcome = {"outcome": "refused", "detail": str(err)[:200]}
        except BaseException as err:  # noqa: BLE001 - exactly what the fuzzer looks for
            outcome = {"outcome": "crash", "detail": f"{type(err).__name__}: {str(err)[:300]}",
                       "traceback": traceback.format_exc()[-2000:]}
        connection.send(outcome)


class Worker:
    """A reader process with a memory limit, replaced when it hangs or dies."""

    def __init__(self, memory_bytes: int = WORKER_MEMORY_BYTES):
        self.memory_bytes = memory_bytes
        self._start()

    def _start(self) -> None:
        context = mp.get_context("spawn")   # a clean interpreter: no threads or state from the caller
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, self.memory_bytes), daemon=True)
        self.process.start()
        if not self.connection.poll(120) or self.connection.recv() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def read(self, fmt: str, data: bytes, timeout: float) -> dict:
        try:
            self.connection.send((fmt, data))
            if self.connection.poll(timeout):
                return self.connection.recv()
            outcome = {"outcome": "hang", "detail": f"no answer within {timeout:g} s"}
        except (EOFError, OSError):   # the pipe of a dead worker: EOF, reset or broken
            self.process.join(5)
            outcome = {"outcome": "crash", "detail": f"the worker died (exit code {self.process.exitcode})"}
        self.restart()
        return outcome

    def restart(self) -> None:
        self.process.kill()
        self.process.join()
        self._start()

    def close(self) -> None:
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


# ---------------------------------------------------------------------------- a campaign
FAILURES = ("crash", "hang", "violation")


@dataclass
class FormatReport:
    inputs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    records: int = 0
    accepted: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.outcomes[o] for o in FAILURES)


def run(per_format: int, seed: int = 0, timeout: float = 10.0, formats: tuple[str, ...] = FORMATS,
        data_dir: str | os.PathLike | None = None, keep_failures: str | os.PathLike | None = None,
        progress: bool = False) -> dict[str, FormatReport]:
    """``per_format`` mutated inputs of each format, seeded: the same seed gives the same inputs."""
    seeds = seed_files(data_dir, seed=seed)
    rng = random.Random(seed)
    reports = {fmt: FormatReport() for fmt in formats}
    worker = Worker()
    try:
        for fmt in formats:
            report = reports[fmt]
            start = time.perf_counter()
            for index in range(per_format):
                data, applied = mutate(rng.choice(seeds[fmt]), rng)
                outcome = worker.read(fmt, data, timeout)
                report.inputs += 1
                report.outcomes[outcome["outcome"]] += 1
                report.records += outcome.get("records", 0)
                report.accepted += outcome.get("accepted", 0)
                if outcome["outcome"] in FAILURES:
                    failure = {"format": fmt, "index": index, "mutations": applied, **outcome}
                    report.failures.append(failure)
                    if keep_failures is not None:
                        folder = Path(keep_failures)
                        folder.mkdir(parents=True, exist_ok=True)
                        (folder / f"{fmt}-{index:06d}{EXTENSIONS[fmt]}").write_bytes(data)
                if progress and (index + 1) % 500 == 0:
                    print(f"{fmt}: {index + 1}/{per_format}, {report.failed} failures", flush=True)
            report.seconds = time.perf_counter() - start
    finally:
        worker.close()
    return reports


def table(reports: dict[str, FormatReport]) -> str:
    head = "| format | inputs | read | refused | records | accepted | crashes | hangs | violations | s/input |"
    rows = [head, "|" + "---|" * 10]
    for fmt, r in reports.items():
        o = r.outcomes
        rows.append(f"| {fmt} | {r.inputs:,} | {o['read']:,} | {o['refused']:,} | {r.records:,} | {r.accepted:,} | "
                    f"{o['crash']} | {o['hang']} | {o['violation']} | {r.seconds / max(r.inputs, 1):.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-format", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    args = parser.parse_args(argv)
    reports = run(args.per_format, args.seed, args.timeout, tuple(args.formats.split(",")),
                  keep_failures=args.out / "failures", progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {fmt: {**{k: v for k, v in asdict(r).items() if k != "failures"}, "outcomes": dict(r.outcomes),
                     "failures": r.failures[:50]} for fmt, r in reports.items()}
    (args.out / "fuzz.json").write_text(json.dumps({"seed": args.seed, "per_format": args.per_format,
                                                    "reports": summary}, indent=1))
    print(table(reports))
    return 1 if any(r.failed for r in reports.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
