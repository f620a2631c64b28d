"""The data rules at full PCAM size: audit (per split), audit_cross, prepare and the store check.

Writes a PCAM-format set (262,144 / 32,768 / 32,768 tiles of 96x96x3; uint8, then the course's
float32 layout with NaN, inf and out-of-range values), runs each data rule on it through the
functions the rule scripts call (each in a fresh child process, as Snakemake runs a script), and
prints one table: per rule the wall and CPU time, peak RSS, bytes read, and the plain-read bound
(the time to read the rule's input files once, sequentially, measured just before the rule; for
prepare also a plain copy: its inputs read and as many bytes written as its store holds). As root
the page cache is dropped before every bound and every rule, so both read cold; the table says
so. The tiles are tissue-like noise, distinct by construction, with black and white tiles and
duplicates within and across splits planted at known rows; the run fails if the audit does not
find exactly those. The verify_store row is what every training job does first (train + valid).

    .venv/bin/python benchmarks/scale.py                  # full size (~9 GB uint8, ~36 GB float32)
    .venv/bin/python benchmarks/scale.py --fraction 0.05  # a quick look at 1/20 of the tiles
    .venv/bin/python benchmarks/scale.py --layouts uint8 --keep --dir /scratch/me
    .venv/bin/python benchmarks/scale.py --code before=/work/base --code after=.  # rule by rule

With several --code trees, each rule runs for each tree in turn on the same set (so they share
the machine's load), and their outputs are compared: the audit JSONs, the cross-split pairs and
every store file (by the sha256 in its manifest) must be identical, or the run fails.

Each layout is written at --fraction, or at the largest power-of-two share of it that leaves
--min-free-gb on the disk (the float32 set needs 36 GB at full size, and each --code tree a 9 GB
store); a smaller share has its times and bytes shown scaled up to the asked size (RSS is not
scaled: every rule streams in blocks). The rules' processes share a bytecode cache in the work
directory (see child_env). Everything written is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants

WRITE_BLOCK = 4096  # tiles generated and written at a time
MAX_PERIOD = 1024  # planted rows repeat every `period` rows (1024, or less in a small set)
# row % period -> what is planted there (disjoint, so every count the audit must find is known)
BLACK, WHITE = 1, 2
DUP_SOURCE, DUP_COPIES = 3, (4, 5)  # rows 4 and 5 repeat row 3 of their period: groups of three
CROSS_SOURCE = 6  # in train and valid: a row that later splits repeat
CROSS_COPIES = {"valid": {7: "train"}, "test": {7: "train", 8: "valid"}}  # row -> split repeated
NAN, INF, OUT_OF_RANGE = 9, 10, 11  # float32 layout only
POOL = 256  # tissue-like base tiles that the rows draw from
READ_CHUNK = 8 << 20  # bytes per read of the plain-read bound
GB = 1e9


# ---- the set ----


@dataclass
class Planted:
    """What the generator put where, to check the audit against."""

    faults: dict = field(default_factory=dict)  # split -> {fault: tiles}
    dup_groups: dict = field(default_factory=dict)  # split -> groups of identical tiles
    crossing: dict = field(default_factory=dict)  # split -> {source tile id: rows holding it}

    def cross_pairs(self, a: str, b: str) -> int:
        ids_a, ids_b = self.crossing.get(a, {}), self.crossing.get(b, {})
        return sum(n * ids_b[i] for i, n in ids_a.items() if i in ids_b)


def split_sizes(fraction: float) -> dict[str, int]:
    return {s: max(64, round(n * fraction)) for s, n in constants.FULL_SIZES.items()}


def planting_period(sizes: dict[str, int]) -> int:
    """MAX_PERIOD, or a power of two that gives the smallest split four periods."""
    period = MAX_PERIOD
    while period > 16 and min(sizes.values()) < 4 * period:
        period //= 2
    return period


def tissue_pool(rng: np.random.Generator) -> np.ndarray:
    """POOL smooth pink/purple colour fields (H&E-like), values 20..220, as base tiles."""
    palette = np.array([[205, 120, 170], [120, 60, 150], [215, 200, 215], [170, 90, 160]], np.float32)
    coarse = rng.integers(0, len(palette), (POOL, 6, 6))
    weights = rng.uniform(0.75, 1.0, (POOL, 6, 6, 1)).astype(np.float32)
    tiles = (palette[coarse] * weights).repeat(16, axis=1).repeat(16, axis=2)
    return np.clip(tiles, 20, 220).astype(np.uint8)


def stamp(tiles: np.ndarray, ids: np.ndarray) -> None:
    """Write each tile's id into pixel (0, 0) (base-200 digits, values 28..227): no two ids alike."""
    for channel in range(3):
        tiles[:, 0, 0, channel] = 28 + (ids // 200**channel) % 200


def make_block(rows: np.ndarray, split: str, split_id: int, period: int, rng, pool, reservoir) -> tuple:
    """uint8 tiles of `rows` with the planted rows in place; the black/white counts."""
    block = pool[rng.integers(0, POOL, len(rows))]
    block += rng.integers(0, 16, block.shape, dtype=np.uint8)  # tissue texture; values stay <= 235
    stamp(block, rows + split_id * 10_000_000)
    phase = rows % period
    block[phase == BLACK] = rng.integers(0, 11, (1, *constants.TILE_SHAPE), dtype=np.uint8)
    block[phase == WHITE] = rng.integers(245, 256, (1, *constants.TILE_SHAPE), dtype=np.uint8)
    for i in np.flatnonzero(phase == DUP_SOURCE):
        reservoir[(split, int(rows[i]) // period)] = block[i].copy()
    for i in np.flatnonzero(phase == CROSS_SOURCE):
        reservoir[(split, "cross", int(rows[i]) // period)] = block[i].copy()
    for i in np.flatnonzero(np.isin(phase, DUP_COPIES)):
        block[i] = reservoir[(split, int(rows[i]) // period)]
    return block, phase


def write_split(
    raw_dir: Path, split: str, split_id: int, n: int, dtype, period: int, rng, pool, reservoir, planted
) -> None:
    """One split's x and y files, written in blocks; the planted rows as laid out at the top."""
    faults = dict.fromkeys(constants.FAULTS, 0)
    crossing = planted.crossing.setdefault(split, {})
    with h5py.File(raw_dir / constants.raw_filename(split, "x"), "w") as fx:
        x = fx.create_dataset(constants.X_KEY, (n, *constants.TILE_SHAPE), dtype)
        for start in range(0, n, WRITE_BLOCK):
            rows = np.arange(start, min(start + WRITE_BLOCK, n))
            block, phase = make_block(rows, split, split_id, period, rng, pool, reservoir)
            for i in np.flatnonzero(phase == CROSS_SOURCE):
                crossing[(split, int(rows[i]) // period)] = 1
            for offset, source in CROSS_COPIES.get(split, {}).items():
                for i in np.flatnonzero(phase == offset):
                    key = (source, "cross", int(rows[i]) // period)
                    if key in reservoir:
                        block[i] = reservoir[key]
                        crossing[key[::2]] = crossing.get(key[::2], 0) + 1
            faults["black"] += int((phase == BLACK).sum())
            faults["white"] += int((phase == WHITE).sum())
            block = block.astype(dtype)
            if block.dtype != np.uint8:
                for fault, count in poison(block, phase).items():
                    faults[fault] += count
            x[start : start + len(rows)] = block
    with h5py.File(raw_dir / constants.raw_filename(split, "y"), "w") as fy:
        fy.create_dataset(constants.Y_KEY, data=rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))
    planted.faults[split] = faults
    # a group needs its source and at least one copy inside the split
    planted.dup_groups[split] = sum(1 for row in range(DUP_SOURCE, n, period) if row + 1 < n)


def poison(block: np.ndarray, phase: np.ndarray) -> dict[str, int]:
    """The course copy's faults: a NaN, an inf, or values outside 0..255 in a few tiles (not pixel 0,0)."""
    block[phase == NAN, 5, 5, 0] = np.nan
    block[phase == INF, 6, 6, 1] = np.inf
    block[phase == OUT_OF_RANGE, 7, 7, 2] = 300.0
    block[phase == OUT_OF_RANGE, 8, 8, 0] = -20.0
    return {
        f: int((phase == p).sum()) for f, p in (("nan", NAN), ("inf", INF), ("out_of_range", OUT_OF_RANGE))
    }


def write_set(raw_dir: Path, sizes: dict[str, int], dtype, seed: int) -> Planted:
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool, reservoir, planted = tissue_pool(rng), {}, Planted()
    period = planting_period(sizes)
    for split_id, (split, n) in enumerate(sizes.items()):
        write_split(raw_dir, split, split_id, n, dtype, period, rng, pool, reservoir, planted)
    return planted


# ---- the rules, each in a child process ----


RULES = [f"audit:{s}" for s in constants.SPLITS] + ["audit_cross", "prepare", "verify_store"]


def rule_main(rule: str, spec: dict) -> None:
    """In the child: what the rule's script does (workflow_scripts/{audit,audit_cross,prepare}.py),
    or what a training job does first (verify_store on train+valid)."""
    from pcamflow.config import validate_section

    audit_settings = validate_section("audit", {}, source="benchmark")
    raw, work = Path(spec["raw_dir"]), Path(spec["work"])
    audit_dir = work / "audit"
    audit_dir.mkdir(parents=True, exist_ok=True)
    splits = constants.SPLITS
    if rule.startswith("audit:"):
        from pcamflow.data.audit import audit_split, write_audit

        split = rule.split(":")[1]
        x, y = (raw / constants.raw_filename(split, k) for k in ("x", "y"))
        result = audit_split(x, y, split=split, **audit_settings)
        write_audit(
            result, audit_dir / f"{split}.json", audit_dir / f"{split}.png", audit_dir / f"{split}_hashes.npy"
        )
    elif rule == "audit_cross":
        from pcamflow.data.audit import audit_cross

        audit_cross(
            {s: audit_dir / f"{s}_hashes.npy" for s in splits},
            {s: audit_dir / f"{s}.json" for s in splits},
            audit_dir / constants.CROSS_SPLIT_FILE,
        )
    elif rule == "prepare":
        from pcamflow.data.prepare import prepare_store
        from pcamflow.io import read_json

        prepare_store(
            {s: tuple(raw / constants.raw_filename(s, k) for k in ("x", "y")) for s in splits},
            work / "prepared",
            audits={s: read_json(audit_dir / f"{s}.json") for s in splits},
            cross=read_json(audit_dir / constants.CROSS_SPLIT_FILE),
            block_size=audit_settings["block_size"],
            **validate_section("prepare", {}, source="benchmark"),
        )
    elif rule == "verify_store":
        from pcamflow.data.store import verify_store

        verify_store(work / "prepared", ("train", "valid"))
    else:
        raise SystemExit(f"unknown rule {rule}")
    # for the parent: this process's I/O counters, and its peak RSS as VmHWM (getrusage's maxrss
    # would include the parent's memory: Linux carries it over the fork and exec)
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    hwm = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    measured = {k: int(v) for k, v in io.items()} | {"hwm_kib": int(hwm.group(1))}
    Path(spec["io_out"]).write_text(json.dumps(measured))


def rule_inputs(rule: str, raw: Path, work: Path) -> list[Path]:
    """The files a rule reads (what the plain-read bound reads)."""
    audit_dir = work / "audit"
    if rule.startswith("audit:"):
        split = rule.split(":")[1]
        return [raw / constants.raw_filename(split, k) for k in ("x", "y")]
    if rule == "audit_cross":
        return [audit_dir / f"{s}{ext}" for s in constants.SPLITS for ext in ("_hashes.npy", ".json")]
    if rule == "prepare":
        raw_files = [raw / constants.raw_filename(s, k) for s in constants.SPLITS for k in ("x", "y")]
        audits = [audit_dir / f"{s}.json" for s in constants.SPLITS]
        return raw_files + audits + [audit_dir / constants.CROSS_SPLIT_FILE]
    from pcamflow.data.store import store_files

    return store_files(work / "prepared", ("train", "valid"))


def child_env(code: str, pycache: Path) -> dict:
    """The environment of a rule's process: pcamflow from `code`, and a bytecode cache.

    An installed environment holds compiled bytecode; one that does not (PYTHONDONTWRITEBYTECODE
    set, no __pycache__) makes every process compile matplotlib, jsonschema and the rest from
    source, seconds of CPU that no rule would pay elsewhere. The cache goes into the work directory.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | {"PYTHONPATH": code, "PYTHONPYCACHEPREFIX": str(pycache)}


def warm_bytecode(code: str, pycache: Path) -> None:
    """Compile what the rules import once, before anything is timed."""
    imports = "import pcamflow.data.audit, pcamflow.data.prepare, pcamflow.data.store, pcamflow.plots"
    subprocess.run([sys.executable, "-c", imports], env=child_env(code, pycache), check=True)


def run_child(rule: str, spec: dict, code: str, pycache: Path) -> dict:
    """Run rule_main in a fresh interpreter on the pcamflow in `code`: wall and CPU time, peak RSS,
    bytes read (rchar: every read call, page cache or disk)."""
    io_out = Path(spec["work"]) / "io.json"
    spec = dict(spec, io_out=str(io_out))
    env = child_env(code, pycache)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", rule, json.dumps(spec)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"rule {rule} failed with {code} (exit {proc.returncode})")
    measured = json.loads(io_out.read_text())
    io_out.unlink()
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "cpu": cpu, "rss_mib": measured["hwm_kib"] / 1024, "rchar": measured["rchar"]}


def this_code() -> str:
    """The source tree of the pcamflow this script imports (the directory holding pcamflow/)."""
    import pcamflow

    return str(Path(pcamflow.__file__).resolve().parents[1])


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def plain_read(paths: list[Path]) -> tuple[float, int]:
    """Seconds to read the files once, sequentially, and the bytes read."""
    buffer, total = bytearray(READ_CHUNK), 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buffer):
                total += n
    return time.perf_counter() - start, total


def plain_copy(paths: list[Path], out: Path, write_bytes: int) -> float:
    """Seconds to read the files once and write the first write_bytes of them to out, written as
    prepare writes its store (io.StreamWriter: O_DIRECT where the file system takes it), unhashed;
    out is removed again."""
    from pcamflow.io import StreamWriter

    buffer, left = bytearray(READ_CHUNK), write_bytes
    start = time.perf_counter()
    copy = StreamWriter(out, algorithm=None)
    try:
        for path in paths:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buffer):
                    copy.write(memoryview(buffer)[: min(n, left)])
                    left -= min(n, left)
        copy.finish()
        return time.perf_counter() - start
    finally:
        copy.close()
        out.unlink(missing_ok=True)


def measure_rules(
    raw: Path, runs: dict[str, tuple[str, Path]], cold: bool, keep: bool, pycache: Path, store_bytes: int
) -> list[dict]:
    """Each rule for each code in turn (so codes compare under the same load), each after its read
    bound; prepare, which writes as much as it reads of uint8 tiles, also after a plain copy."""
    for code, _ in runs.values():
        warm_bytecode(code, pycache)
    rows = []
    for rule in RULES:
        for name, (code, work) in runs.items():
            if cold:
                drop_caches()
            inputs = rule_inputs(rule, raw, work)
            bound, size = plain_read(inputs)
            io_bound = bound
            if rule == "prepare":
                if cold:
                    drop_caches()
                io_bound = plain_copy(inputs, work / "copy.tmp", store_bytes)
            if cold:
                drop_caches()
            result = run_child(rule, {"raw_dir": str(raw), "work": str(work)}, code, pycache)
            rows.append({"code": name, "rule": rule, "bound": bound, "io_bound": io_bound, **result})
            print(f"  {name} {rule}: {result['wall']:.1f} s (read bound {bound:.1f} s)", flush=True)
            if rule == "verify_store" and not keep:  # the big arrays go; the manifest stays to compare
                for path in (work / "prepared").glob("*_x.npy"):
                    path.unlink()
    return rows


# ---- checks and the table ----


def check_audit(work: Path, planted: Planted) -> None:
    """The audit found exactly what was planted: faults, duplicate groups, pairs across splits."""
    from pcamflow.io import read_json

    problems = []
    for split in constants.SPLITS:
        report = read_json(work / "audit" / f"{split}.json")
        found = {f: report["faults"][f]["tiles"] for f in constants.FAULTS}
        found["duplicate groups"] = report["duplicates"]["n_groups"]
        want = dict(planted.faults[split], **{"duplicate groups": planted.dup_groups[split]})
        problems += [f"{split} {k}: found {found[k]}, planted {v}" for k, v in want.items() if found[k] != v]
    cross = read_json(work / "audit" / constants.CROSS_SPLIT_FILE)["counts"]
    for i, a in enumerate(constants.SPLITS):
        for b in constants.SPLITS[i + 1 :]:
            if cross[f"{a}-{b}"] != planted.cross_pairs(a, b):
                problems.append(
                    f"{a}-{b} pairs: found {cross[f'{a}-{b}']}, planted {planted.cross_pairs(a, b)}"
                )
    if problems:
        raise SystemExit("audit does not match the planted set: " + "; ".join(problems))


def output_differences(reference: Path, other: Path) -> list[str]:
    """Which outputs of two runs differ: audit JSONs, cross-split pairs, store files (by manifest sha256)."""
    from pcamflow.io import read_json

    names = [constants.AUDIT_FILE.format(split=s) for s in constants.SPLITS] + [constants.CROSS_SPLIT_FILE]
    differ = [
        name
        for name in names
        if not same_audit(read_json(reference / "audit" / name), read_json(other / "audit" / name))
    ]
    files = {run: read_json(run / "prepared" / "manifest.json")["files"] for run in (reference, other)}
    differ += [name for name in files[reference] if files[reference][name] != files[other].get(name)]
    return differ


def same_audit(a: dict, b: dict) -> bool:
    """Two trees' audit files agree, their file checksums compared only under the algorithms both
    took (pcamflow 2026-12 moved from md5 to xxh128; the cross-split file has no "files")."""
    if "files" in a and "files" in b:
        shared = a["files"].keys() & b["files"].keys()
        a, b = ({**d, "files": {k: d["files"][k] for k in shared}} for d in (a, b))
    return a == b


def print_table(layout: str, rows: list[dict], scale: float, cold: bool) -> None:
    """One row per rule and code; scale > 1 where the layout was measured on a smaller share than asked."""
    print(
        f"\n{layout}: page cache {'dropped before each bound and rule' if cold else 'NOT dropped (warm reads)'}"
    )
    if scale != 1:
        print(f"measured on 1/{scale:g} of the asked size (disk); times and GB scaled x{scale:g}")
    width = max(len(row["code"]) for row in rows) + 2
    print(
        f"{'code':<{width}}{'rule':<17}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>13}{'read GB':>9}"
        f"{'read bound s':>13}{'ratio':>9}{'I/O bound s':>12}{'ratio':>9}"
    )
    for row in rows + totals(rows, "audit:", "audit (3 splits)"):
        numbers = (
            f"{row['wall'] * scale:.1f}",
            f"{row['cpu'] * scale:.1f}",
            f"{row['rss_mib']:.0f}",
            f"{row['rchar'] * scale / GB:.2f}",
            f"{row['bound'] * scale:.2f}",
            f"{row['wall'] / row['bound']:.2f}",
            f"{row['io_bound'] * scale:.2f}",
            f"{row['wall'] / row['io_bound']:.2f}",
        )
        widths = (9, 9, 13, 9, 13, 9, 12, 9)
        print(
            f"{row['code']:<{width}}{row['rule']:<17}"
            + "".join(f" {n:>{w - 1}}" for n, w in zip(numbers, widths))
        )
    print(
        "CPU s: user + system time of the rule's process (all its threads). read GB: what it read "
        "(page cache or disk).\nread bound: reading the rule's input files once, sequentially. I/O "
        "bound: the same, except for prepare:\nreading its inputs and writing as many bytes as its "
        "store holds, written as prepare writes (a copy, unhashed)."
    )


def totals(rows: list[dict], prefix: str, label: str) -> list[dict]:
    """Per code, one row summing the rows whose rule starts with prefix (peak RSS: the largest)."""
    summed = {}
    for row in rows:
        if row["rule"].startswith(prefix):
            total = summed.setdefault(row["code"], {"code": row["code"], "rule": label, "rss_mib": 0})
            for key in ("wall", "cpu", "rchar", "bound", "io_bound"):
                total[key] = total.get(key, 0) + row[key]
            total["rss_mib"] = max(total["rss_mib"], row["rss_mib"])
    return list(summed.values())


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def set_bytes(sizes: dict[str, int], itemsize: int, stores: int) -> int:
    """The raw set plus the prepared stores (uint8) made of it."""
    tiles = sum(sizes.values()) * int(np.prod(constants.TILE_SHAPE))
    return tiles * itemsize + stores * tiles


def fitting_fraction(work: Path, fraction: float, itemsize: int, stores: int, min_free: float) -> float:
    """The largest fraction / 2**k whose set and stores leave min_free bytes on the disk (0: none)."""
    share = fraction
    while set_bytes(split_sizes(share), itemsize, stores) > free_bytes(work) - min_free:
        share /= 2
        if share * constants.FULL_SIZES["train"] < 1024:
            return 0.0
    return share


def run_layout(layout: str, work: Path, codes: dict[str, str], fraction: float, scale: float, args) -> bool:
    """Write the set, measure every rule for every code, check and compare; False if outputs differ."""
    dtype = np.uint8 if layout == "uint8" else np.float32
    sizes = split_sizes(fraction)
    raw = work / layout / "raw"
    start = time.perf_counter()
    planted = write_set(raw, sizes, dtype, args.seed)
    written = sum(p.stat().st_size for p in raw.iterdir())
    print(
        f"{layout}: wrote {sizes} tiles, {written / GB:.2f} GB in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    runs = {name: (code, work / layout / f"run-{i}") for i, (name, code) in enumerate(codes.items())}
    try:
        store_bytes = sum(sizes.values()) * int(np.prod(constants.TILE_SHAPE))
        rows = measure_rules(raw, runs, args.cold, args.keep, work / "pycache", store_bytes)
        for _, run in runs.values():
            check_audit(run, planted)
        print("  every audit found exactly the planted faults, duplicate groups and cross-split pairs")
        print_table(layout, rows, scale, args.cold)
        (first, (_, reference)), *others = runs.items()
        same = True
        for name, (_, run) in others:
            differ = output_differences(reference, run)
            print(
                f"outputs of {name} against {first}: {'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}"
            )
            same = same and not differ
        return same
    finally:
        if not args.keep:
            shutil.rmtree(work / layout, ignore_errors=True)


def parse_codes(values: list[str] | None) -> dict[str, str]:
    """--code [NAME=]PATH -> {name: source tree}: PATH a checkout (its src/ is used) or a source tree
    holding pcamflow/; default: the pcamflow this script imports."""
    codes = {}
    for value in values or [f"this={this_code()}"]:
        name, _, path = value.partition("=") if "=" in value else (value, "", value)
        path = Path(path).resolve()
        tree = path / "src" if (path / "src" / "pcamflow" / "__init__.py").exists() else path
        if not (tree / "pcamflow" / "__init__.py").exists():
            raise SystemExit(f"--code {value}: no pcamflow package in {path} or {path / 'src'}")
        codes[name] = str(tree)
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="share of the full split sizes (default 1)"
    )
    parser.add_argument("--layouts", default="uint8,float32", help="comma-separated: uint8, float32")
    parser.add_argument(
        "--code",
        action="append",
        metavar="[NAME=]PATH",
        help="a checkout (or source tree) to measure; repeat to compare them rule by rule on the same "
        "set; default: the pcamflow this script imports",
    )
    parser.add_argument(
        "--dir", help="where to make the work directory (default: the system's temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the sets, audits and stores written")
    parser.add_argument(
        "--min-free-gb", type=float, default=20, help="disk a set must leave free, or it is measured smaller"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="leave the page cache alone (default: drop it, as root, before each read)",
    )
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    layouts = [s for s in args.layouts.split(",") if s]
    if not set(layouts) <= {"uint8", "float32"}:
        parser.error(f"--layouts: uint8 and/or float32, got {args.layouts}")
    codes = parse_codes(args.code)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    # a fresh subdirectory: the rmtree at the end must never reach files of the user's --dir
    work = Path(tempfile.mkdtemp(prefix="pcamflow-scale-", dir=args.dir))
    args.cold = not args.warm and drop_caches()
    print(f"work directory {work}; page cache {'dropped before each read' if args.cold else 'left warm'}")
    print("code: " + ", ".join(f"{name} = {path}" for name, path in codes.items()))
    same = True
    try:
        for layout in layouts:
            itemsize = 1 if layout == "uint8" else 4
            fraction = fitting_fraction(work, args.fraction, itemsize, len(codes), args.min_free_gb * GB)
            if fraction == 0:
                print(f"{layout}: not enough free disk for even a small fraction; skipped")
                continue
            same = run_layout(layout, work, codes, fraction, args.fraction / fraction, args) and same
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    if not same:
        raise SystemExit("the codes' outputs differ (see above)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        rule_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()
