"""QM9 xTB spectra, curated a shard at a time into ``datasets/spectra/qm9-xtb`` and committed.

The computation order is fixed: the first 3,000 molecules of EDM's test split (evaluation needs
them), then EDM's train split, then the valid split, then the rest of test, each in EDM's
permutation order. Shards cover consecutive positions of that order; a run computes the first
positions that no shard covers, so it resumes wherever the committed shards end, on any machine.

Workers are single-threaded processes (OMP_NUM_THREADS=1) that need numpy, ASE, tblite and
pyarrow only; the parent prepares their jobs (parsing QM9, InChIKeys with RDKit) and rebuilds the
manifest after every finished shard. A lock file keeps two runs off the same folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.data.qm9 import read_qm9_frame
from chemgen.errors import UsageError
from chemgen.spectra import shards as store
from chemgen.spectra.compute import SpectraFailure, SpectraSettings, compute_spectrum

NAME = "qm9-xtb"
SHARD_SIZE = 500
TEST_FIRST = 3_000
RECIPE_VERSION = 1   # bump when the same input and settings would give different shards


def default_folder() -> Path:
    """``$CHEMGEN_SPECTRA_DIR`` or the checkout's ``datasets/spectra/qm9-xtb`` (committed); an installed
    chemgen has no checkout and must be told."""
    from chemgen.paths import DataDirError, source_checkout

    env = os.environ.get("CHEMGEN_SPECTRA_DIR")
    if env:
        return Path(env) / NAME
    checkout = source_checkout()
    if checkout is None:
        raise DataDirError("no spectra dataset folder: chemgen is installed, not run from a source checkout; "
                           "set CHEMGEN_SPECTRA_DIR to the folder holding qm9-xtb/")
    return checkout / "datasets" / "spectra" / NAME


# ---------------------------------------------------------------------------- what to compute
def computation_order() -> tuple[np.ndarray, np.ndarray]:
    """Row positions into the GDB-ordered QM9 table, and their split names, in computation order."""
    from chemgen.data.qm9 import edm_split

    split = edm_split()
    parts = [("test", split["test"][:TEST_FIRST]), ("train", split["train"]), ("valid", split["valid"]),
             ("test", split["test"][TEST_FIRST:])]
    rows = np.concatenate([p for _, p in parts])
    names = np.concatenate([np.full(len(p), s, dtype=object) for s, p in parts])
    return rows, names


@dataclass(frozen=True)
class Molecule:
    order: int
    qm9_index: int
    split: str
    inchikey: str
    smiles: str
    numbers: list[int]
    positions: list[list[float]]  # B3LYP geometry, Angstrom


@dataclass(frozen=True)
class ShardJob:
    first: int
    end: int
    molecules: list[Molecule]
    settings: SpectraSettings
    deadline: float | None = None  # epoch seconds: abandon the shard (write nothing) past this

    def input_sha256(self) -> str:
        key = {"recipe": RECIPE_VERSION, "settings": self.settings.as_dict(),
               "molecules": [(m.order, m.qm9_index, m.numbers, np.round(m.positions, 6).tolist())
                             for m in self.molecules]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _inchikey(inchi: str) -> str:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return Chem.inchi.InchiToInchiKey(inchi) or ""
    finally:
        RDLogger.EnableLog("rdApp.*")


def make_molecules(positions: range, frame=None) -> list[Molecule]:
    """The molecules at these positions of the computation order."""
    from chemgen.data.qm9 import row_to_system

    frame = read_qm9_frame() if frame is None else frame
    rows, splits = computation_order()
    molecules = []
    for order in positions:
        row = frame.iloc[int(rows[order])]
        system = row_to_system(row)
        molecules.append(Molecule(order, int(row.Index), str(splits[order]), _inchikey(str(row.InChi)),
                                  str(row.SMILES), system.atomic_numbers.tolist(), system.pos.tolist()))
    return molecules


def plan(done: list[tuple[int, int]], limit: int, shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """Ranges of the first ``limit`` positions that no shard covers, cut at multiples of ``shard_size``."""
    covered = np.zeros(limit, dtype=bool)
    for first, end in done:
        covered[first:min(end, limit)] = True
    ranges = []
    position = 0
    while position < limit:
        if covered[position]:
            position += 1
            continue
        end = min(limit, (position // shard_size + 1) * shard_size)
        stop = position + int(np.argmax(covered[position:end])) if covered[position:end].any() else end
        ranges.append((position, stop))
        position = stop
    return ranges


# ---------------------------------------------------------------------------- one shard (worker side)
def _row(molecule: Molecule, result: Any, failure: str | None) -> dict[str, Any]:
    row = {"order": molecule.order, "qm9_index": molecule.qm9_index, "split": molecule.split,
           "inchikey": molecule.inchikey, "smiles": molecule.smiles, "atomic_numbers": molecule.numbers,
           "positions": None, "energy_eh": None, "frequencies_cm1": None, "ir_km_mol": None,
           "raman_a4_amu": None, "num_imaginary": None, "optimisation_steps": None,
           "seconds": None, "failure": failure}
    if result is not None:
        row.update(positions=result.positions_a.ravel().tolist(), energy_eh=result.energy_eh,
                   frequencies_cm1=result.frequencies_cm1.tolist(), ir_km_mol=result.ir_intensities_km_mol.tolist(),
                   raman_a4_amu=None if result.raman_activities_a4_amu is None else result.raman_activities_a4_amu.tolist(),
                   num_imaginary=result.num_imaginary, optimisation_steps=result.optimisation_steps,
                   seconds=result.seconds)
    return row


class ShardAbandoned(RuntimeError):
    """The deadline passed while the shard was being computed; nothing was written."""


def compute_shard(job: ShardJob, folder: str, ticks=None) -> store.ShardInfo:
    """Compute every molecule of the job and write its shard; ``ticks`` (a queue) gets one item per molecule."""
    from chemgen.spectra.xtb import tblite_version

    start = time.time()
    rows = []
    for molecule in job.molecules:
        if job.deadline is not None and time.time() > job.deadline:
            raise ShardAbandoned(f"deadline reached in shard [{job.first}, {job.end})")
        try:
            result = compute_spectrum(np.array(molecule.numbers), np.array(molecule.positions), job.settings)
            rows.append(_row(molecule, result, None))
        except SpectraFailure as err:
            rows.append(_row(molecule, None, str(err)))
        except Exception as err:  # noqa: BLE001  an unforeseen error is a recorded failure, not a lost shard
            rows.append(_row(molecule, None, f"unexpected {type(err).__name__}: {err}"))
        if ticks is not None:
            ticks.put(1)
    metadata = {"input_sha256": job.input_sha256(), "settings": job.settings.as_dict(), "recipe": RECIPE_VERSION,
                "tblite_version": tblite_version(), "seconds": round(time.time() - start, 2),
                "host": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)",
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return store.write_shard(Path(folder), job.first, job.end, rows, metadata)


def _single_threaded_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite loads its OpenMP runtime


# ---------------------------------------------------------------------------- the run (parent side)
def manifest_description() -> dict[str, Any]:
    return {
        "name": NAME,
        "description": "IR and Raman stick spectra of QM9 molecules: GFN2-xTB (tblite) relaxation from the "
                       "B3LYP geometry, central-difference Hessian, IR intensities from dipole derivatives, "
                       "Raman activities from finite-field polarisability derivatives.",
        "order": f"EDM split (np.random.seed(0) permutation): test[:{TEST_FIRST}], train, valid, test[{TEST_FIRST}:]",
        "shard_size": SHARD_SIZE,
        "recipe": RECIPE_VERSION,
        "units": {"frequencies_cm1": "cm^-1 (harmonic, unscaled)", "ir_km_mol": "km/mol",
                  "raman_a4_amu": "A^4/amu (activity 45a'^2 + 7g'^2)", "positions": "Angstrom",
                  "energy_eh": "hartree"},
    }


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:   # not "w": that would erase the holder's pid before the try
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise store.SpectraStoreError(f"{folder}: another spectra curation (pid {holder}) is running there") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def parse_until(text: str | None, now: datetime | None = None) -> float | None:
    """``HH:MM`` (local time, the next such moment) as epoch seconds."""
    if not text:
        return None
    try:
        hour, minute = (int(p) for p in text.split(":"))
        now = now or datetime.now()
        moment = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        raise UsageError(f"--until {text!r}: expected HH:MM (24-hour clock)") from None
    if moment <= now:
        moment += timedelta(days=1)
    return moment.timestamp()


@dataclass
class CurationReport:
    folder: Path
    computed: int = 0          # molecules computed in this run
    shards_written: list[str] = field(default_factory=list)
    abandoned: int = 0         # shards given up at the deadline
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def molecules_per_hour(self) -> float:
        return 3600 * self.computed / self.seconds if self.seconds else 0.0


def check_settings(shards: list[store.ShardInfo], settings: SpectraSettings, folder: Path) -> None:
    wanted = json.dumps(settings.as_dict(), sort_keys=True)
    for s in shards:
        if json.dumps(s.metadata.get("settings"), sort_keys=True) != wanted:
            raise store.SpectraStoreError(
                f"{folder / s.file}: computed with other settings than this run's; use another --out folder")


def curate_spectra(folder: Path | None = None, workers: int = 1, limit: int | None = None,
                   until: str | None = None, settings: SpectraSettings = SpectraSettings(),
                   progress: bool = True, shard_size: int = SHARD_SIZE) -> CurationReport:
    """Compute the first ``limit`` molecules of the order (all 130,831 by default) that no shard covers."""
    from chemgen.data.qm9 import NUM_MOLECULES

    folder = Path(folder) if folder else default_folder()
    deadline = parse_until(until)
    limit = NUM_MOLECULES if limit is None else min(limit, NUM_MOLECULES)
    if limit < 0 or workers < 1 or shard_size < 1:
        raise UsageError("--limit must be >= 0, --workers and --shard-size >= 1")
    report = CurationReport(folder)
    start = time.perf_counter()
    with folder_lock(folder), GracefulStop() as stop:
        store.remove_temporaries(folder)
        existing = store.scan(folder)
        check_settings(existing, settings, folder)
        ranges = plan(store.covered(existing), limit, shard_size)
        todo = sum(end - first for first, end in ranges)
        if ranges:
            frame = read_qm9_frame()

            def job(first: int, end: int) -> ShardJob:  # built when submitted: the parent stays small
                return ShardJob(first, end, make_molecules(range(first, end), frame), settings, deadline)

            run_shards(ranges, job, folder, workers, todo, deadline, progress, report, stop)
        report.manifest = store.build_manifest(folder, manifest_description())
    report.seconds = time.perf_counter() - start
    return report


def run_shards(ranges: list[tuple[int, int]], make_job: Callable[[int, int], ShardJob], folder: Path, workers: int,
               todo: int, deadline: float | None, progress: bool, report: CurationReport,
               stop: GracefulStop, manifest: bool = True) -> None:
    """Compute these ranges in single-threaded worker processes, one shard per job (see `curate_spectra`)."""
    import multiprocessing as mp

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} mol/h"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    context = mp.get_context("spawn")
    manager = context.Manager()
    ticks = manager.Queue()
    pending = list(ranges)
    running: dict[Future, tuple[int, int]] = {}
    started = time.time()
    per_molecule = 1.0  # seconds per molecule per worker, updated as molecules finish
    with Progress(*columns, disable=not progress) as bar, \
            ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded_worker) as pool:
        task = bar.add_task(f"xTB spectra -> {folder.name}", total=todo, rate="-")
        try:
            while pending or running:
                if stop.requested and not stop.announced:
                    bar.console.print(f"{datetime.now():%H:%M:%S} SIGTERM: finishing {len(running)} running shard(s), "
                                      "starting no more", highlight=False)
                    stop.announced = True
                    pending.clear()
                while pending and len(running) < workers:
                    first, end = pending[0]
                    if deadline is not None and time.time() + per_molecule * (end - first) > deadline:
                        pending.clear()  # it would not finish in time: start nothing more
                        break
                    pending.pop(0)
                    running[pool.submit(compute_shard, make_job(first, end), str(folder), ticks)] = (first, end)
                if not running:
                    break
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(ticks, bar, task, report, started)
                if report.computed:
                    per_molecule = (time.time() - started) * min(workers, len(ranges)) / report.computed
                for future in done:
                    running.pop(future)
                    try:
                        info = future.result()
                    except ShardAbandoned:
                        report.abandoned += 1
                        continue
                    report.shards_written.append(info.file)
                    total = store.build_manifest(folder, manifest_description())["counts"]["molecules"] if manifest \
                        else sum(s.rows for s in store.scan(folder))
                    rate = 3600 * report.computed / max(time.time() - started, 1e-9)
                    left = todo - report.computed
                    bar.console.print(
                        f"{datetime.now():%H:%M:%S} wrote {info.file}: {info.ok} ok, {info.failed} failed, "
                        f"{info.metadata['seconds']:.0f} s; run {report.computed:,}/{todo:,} at {rate:,.0f} mol/h, "
                        f"ETA {timedelta(seconds=round(3600 * left / max(rate, 1e-9)))}; "
                        f"dataset {total:,} molecules", highlight=False)
            _drain(ticks, bar, task, report, started)
        except BaseException:
            for future in running:
                future.cancel()
            raise
        finally:
            manager.shutdown()


class GracefulStop:
    """SIGTERM asks the run to finish its running shards and start no more (a second one stops it at once)."""

    def __init__(self) -> None:
        self.requested = False
        self.announced = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt("second SIGTERM")
        self.requested = True

    def __enter__(self) -> GracefulStop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _drain(ticks, bar, task, report: CurationReport, started: float) -> None:
    count = 0
    while True:
        try:
            count += ticks.get_nowait()
        except (queue.Empty, EOFError, OSError):
            break
    if count:
        report.computed += count
        rate = 3600 * report.computed / max(time.time() - started, 1e-9)
        bar.update(task, advance=count, rate=f"{rate:,.0f}")


# ---------------------------------------------------------------------------- pieces the Prefect flow uses
def cached_shard(folder: Path, job: ShardJob) -> store.ShardInfo | None:
    """The shard of exactly this input (same content hash), if it is already on disk."""
    path = Path(folder) / store.shard_name(job.first, job.end)
    if not path.is_file():
        return None
    info = store.shard_info(path)
    return info if info.metadata.get("input_sha256") == job.input_sha256() else None


def compute_shard_isolated(job: ShardJob, folder: Path) -> store.ShardInfo:
    """`compute_shard` in a fresh single-threaded process (a Prefect task thread stays free)."""
    import multiprocessing as mp

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_single_threaded_worker) as pool:
        return pool.submit(compute_shard, job, str(folder)).result()


def export_plan(folder: Path, start: int = 0, limit: int | None = None,
                shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """Uncomputed ranges in [start, limit) for another machine (leave [0, start) to this one's job)."""
    from chemgen.data.qm9 import NUM_MOLECULES

    limit = NUM_MOLECULES if limit is None else min(limit, NUM_MOLECULES)
    done = store.covered(store.scan(folder)) if Path(folder).is_dir() else []
    return [(max(first, start), end) for first, end in plan(done + [(0, start)], limit, shard_size) if end > start]


# ---------------------------------------------------------------------------- loading (broadened on load)
def load_broadened(folder: Path | None = None, split: str | None = None, limit: int | None = None,
                   fwhm: float | None = None, scale: float | None = None) -> dict[str, Any]:
    """The computed molecules with IR and Raman spectra broadened onto the 3,501-point grid.

    Returns ``qm9_index``, ``inchikey``, ``smiles``, ``atomic_numbers`` and ``positions`` (lists, relaxed xTB
    geometries), and ``ir`` / ``raman`` as float32 arrays of shape (M, 3501). ``fwhm`` and ``scale``
    default to the dataset card's (Lorentzian FWHM 15 cm^-1, xTB -> B3LYP frequency scale).
    """
    from chemgen.spectra import broadening

    table = store.read_table(Path(folder) if folder else default_folder(), only_ok=True)
    if split is not None:
        table = table.filter(np.asarray(table.column("split").to_pylist(), dtype=object) == split)
    if limit is not None:
        table = table.slice(0, limit)
    options = {"fwhm": fwhm or broadening.FWHM_CM1, "scale": scale}
    frequencies = table.column("frequencies_cm1").to_pylist()
    positions = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in table.column("positions").to_pylist()]
    return {
        "qm9_index": table.column("qm9_index").to_pylist(),
        "inchikey": table.column("inchikey").to_pylist(),
        "smiles": table.column("smiles").to_pylist(),
        "split": table.column("split").to_pylist(),
        "atomic_numbers": table.column("atomic_numbers").to_pylist(),
        "positions": positions,
        "ir": broadening.broaden_many(frequencies, table.column("ir_km_mol").to_pylist(), "ir", **options),
        "raman": broadening.broaden_many(frequencies, table.column("raman_a4_amu").to_pylist(), "raman", **options),
        "grid_cm1": broadening.GRID_CM1,
    }
