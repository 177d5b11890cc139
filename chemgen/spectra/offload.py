"""QM9 spectra on another machine's cores (the GPU machine has 16 and no chemistry stack), brought back as shards.

Here (the chemistry stack parses QM9 and makes the InChIKeys)::

    chemgen data prepare qm9-spectra --export-jobs .spectra-jobs/jobs.json --limit 20000

There (numpy, scipy, pyarrow, ASE and tblite; Python 3.12 wheels of the last two travel along)::

    python -m chemgen.spectra.offload --jobs .spectra-jobs/jobs.json --out "$OUT" --workers 16 --minutes 8

Here again: ``chemgen data prepare qm9-spectra --import-shards spectra-shards.tar`` checks that every
shard holds exactly the molecules and settings this machine would have computed for its range (the
input content hash), adds it, and rebuilds the manifest. Shards that were not finished in time are
simply not in the archive; the next run computes them.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from chemgen.spectra.compute import SpectraSettings
from chemgen.spectra.vibrations import VibrationSettings
from chemgen.spectra.xtb import XtbSettings

ARCHIVE = "spectra-shards.tar"


def export_jobs(path: Path, ranges: list[tuple[int, int]], molecules_of, settings: SpectraSettings) -> Path:
    """Write the molecules of these order ranges and the settings as JSON (no pickle crosses machines)."""
    from chemgen.io import atomic_write

    payload = {"settings": settings.as_dict(),
               "shards": [{"first": first, "end": end, "molecules": [asdict(m) for m in molecules_of(first, end)]}
                          for first, end in ranges]}
    with atomic_write(path) as handle:
        json.dump(payload, handle)
    return path


def load_jobs(path: Path, deadline: float | None = None):
    from chemgen.spectra.curation import Molecule, ShardJob

    payload = json.loads(Path(path).read_text())
    s = payload["settings"]
    settings = SpectraSettings(xtb=XtbSettings(**s["xtb"]), vibrations=VibrationSettings(**s["vibrations"]),
                               raman=s["raman"], imaginary_threshold_cm1=s["imaginary_threshold_cm1"])
    return [ShardJob(job["first"], job["end"], [Molecule(**m) for m in job["molecules"]], settings, deadline)
            for job in payload["shards"]]


def run(jobs_path: Path, out: Path, workers: int, minutes: float, progress: bool = True) -> Path:
    """Compute the jobs' shards until the time budget; archive the finished ones into ``out``."""
    from chemgen.spectra.curation import CurationReport, GracefulStop, run_shards

    deadline = time.time() + 60 * minutes
    jobs = {(j.first, j.end): j for j in load_jobs(jobs_path, deadline)}
    work = Path(tempfile.mkdtemp(prefix="spectra-shards-"))
    report = CurationReport(work)
    start = time.perf_counter()
    with GracefulStop() as stop:
        run_shards(list(jobs), lambda first, end: jobs[first, end], work, workers,
                  sum(e - f for f, e in jobs), deadline, progress, report, stop, manifest=False)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    archive = out / ARCHIVE
    with tarfile.open(archive, "w") as tar:
        for shard in sorted(work.glob("shard-*.parquet")):
            tar.add(shard, arcname=shard.name)
    print(f"{report.computed:,} molecules in {seconds:,.0f} s with {workers} workers "
          f"({3600 * report.computed / max(seconds, 1e-9):,.0f} molecules/hour, "
          f"{3600 * report.computed / max(seconds, 1e-9) / workers:,.0f} per core); "
          f"{len(report.shards_written)} shard(s) in {archive}, {report.abandoned} abandoned at the deadline")
    return archive


def import_shards(archive: Path, folder: Path, settings: SpectraSettings = SpectraSettings()) -> list[str]:
    """Add the archive's shards to ``folder`` after checking each one's molecules and settings."""
    from chemgen.spectra.curation import ShardJob, check_settings, folder_lock, make_molecules, manifest_description, read_qm9_frame
    from chemgen.spectra import shards

    added = []
    with folder_lock(folder), tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-import-") as staging:
        staging = Path(staging)
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and shards.SHARD_PATTERN.match(m.name)]
                if not members:
                    raise shards.SpectraStoreError(f"{archive}: no shard files in the archive")
                tar.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise shards.SpectraStoreError(f"{archive}: unreadable archive ({err})") from err
        incoming = shards.scan(staging)
        check_settings(incoming, settings, archive)
        existing = shards.covered(shards.scan(folder))
        frame = read_qm9_frame()
        for info in incoming:
            expected = ShardJob(info.first, info.end, make_molecules(range(info.first, info.end), frame), settings)
            if info.metadata.get("input_sha256") != expected.input_sha256():
                raise shards.SpectraStoreError(f"{archive}: {info.file} does not hold the molecules of its range")
            if any(first < info.end and info.first < end for first, end in existing):
                continue  # computed here meanwhile: keep what is committed
            os.replace(staging / info.file, folder / info.file)
            existing.append((info.first, info.end))
            added.append(info.file)
        shards.build_manifest(folder, manifest_description())
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description="Compute QM9 spectra shards from a jobs file (see module docs).")
    parser.add_argument("--jobs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for spectra-shards.tar")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--minutes", type=float, default=8.0, help="start no molecule after this budget")
    args = parser.parse_args()
    run(args.jobs, args.out, args.workers, args.minutes)


if __name__ == "__main__":
    main()
