"""Node-local staging: inside a Slurm job, read the prepared store from the job's local scratch.

On Snellius a job asking for `--constraint=scratch-node` gets a node-local NVMe disk at $TMPDIR,
deleted when the job ends. Training reads the train and valid splits every epoch; reading them from
the shared file system (GPFS) by hundreds of jobs at once is slow for everyone, so each job copies
them (not the test split, which only evaluation reads) to $TMPDIR once and reads them from there.
Outside Slurm nothing is copied, nor inside a job that did not ask for node-local scratch (a site
whose partition has none, e.g. the course's MIG slices): that job reads the shared copy.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from pcamflow.data.store import MANIFEST_FILE, store_checksum, store_files
from pcamflow.io import atomic_dir
from pcamflow.slurm import slurm_job

log = logging.getLogger(__name__)

STAGE_ROOT = "pcamflow-staged"
STAGED_SPLITS = ("train", "valid")  # what training reads
SCRATCH_FEATURE = "scratch-node"  # Snellius' node feature for node-local NVMe at $TMPDIR


def job_asks_for_scratch() -> bool | None:
    """Whether this Slurm job was submitted with --constraint=scratch-node; None outside a job or
    when Slurm cannot be asked."""
    job = slurm_job()
    if job is None:
        return None
    return SCRATCH_FEATURE in re.split(r"[^\w-]+", job.get("Features", ""))  # e.g. scratch-node&rome


def node_local_scratch() -> Path | None:
    """The job's node-local scratch directory, or None outside a Slurm job, in a job that did not
    ask for scratch, or without $TMPDIR."""
    tmpdir = os.environ.get("TMPDIR")
    if not os.environ.get("SLURM_JOB_ID") or not tmpdir or not Path(tmpdir).is_dir():
        return None
    if job_asks_for_scratch() is False:
        return None
    return Path(tmpdir)


def stage_prepared(store_dir: str | os.PathLike, splits: tuple[str, ...] = STAGED_SPLITS) -> Path:
    """Where to read the prepared store's `splits` from: a copy of them (with stats and manifest) in
    node-local scratch inside a Slurm job (made once per job, reused while its manifest checksum
    matches), else store_dir itself."""
    store_dir = Path(store_dir)
    scratch = node_local_scratch()
    if scratch is None:
        if job_asks_for_scratch() is False:
            log.info(
                "not staging: Slurm job %s has no node-local scratch (no --constraint=%s; the site "
                "setting node_local_staging is off): reading the shared copy %s",
                os.environ["SLURM_JOB_ID"],
                SCRATCH_FEATURE,
                store_dir,
            )
        return store_dir
    checksum = store_checksum(store_dir)
    staged = scratch / STAGE_ROOT / "-".join([checksum[:16], *splits])
    if _is_complete_copy(staged, checksum):
        log.info("prepared store already staged at %s", staged)
        return staged
    # only the files present: a partial store stages what it has, as it would be read in place
    files = [path for path in store_files(store_dir, splits) if path.exists()]
    needed = sum(path.stat().st_size for path in files)
    free = shutil.disk_usage(scratch).free
    if needed > free:
        log.warning("not staging %s: needs %d bytes, %s has %d free", store_dir, needed, scratch, free)
        return store_dir
    _copy_atomically(files, staged)
    log.info("staged prepared store %s -> %s (%d bytes)", store_dir, staged, needed)
    return staged


def _is_complete_copy(staged: Path, checksum: str) -> bool:
    # A copy appears only by an atomic rename, so a present manifest means a complete copy.
    return (staged / MANIFEST_FILE).exists() and store_checksum(staged) == checksum


def _copy_atomically(files: list[Path], target: Path) -> None:
    """Copy into a temporary sibling, then rename: concurrent jobs on the node never see half a copy."""
    shutil.rmtree(target, ignore_errors=True)  # a copy whose manifest no longer matches
    # replace=False: another process of this job that staged the same store first keeps its copy
    with atomic_dir(target, replace=False) as tmp:
        for path in files:
            shutil.copy2(path, tmp / path.name)
