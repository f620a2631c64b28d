"""Snellius profile variants, generated from the main profile (profiles/snellius/config.yaml).

Snakemake reads one profile file as it is: a YTE template cannot load another file relative to
itself. So a variant (profiles/snellius-h100, profiles/snellius-course) is a complete copy of the
main profile in which only two parts are its own: the header comment (the lines before
`__use_yte__`) and the block between `# site:begin` and `# site:end`, where it sets its site
settings. `python -m pcamflow.profiles` rewrites every variant from the main profile after the main
profile changed; `--check` only lists the variants that are out of date (the tests run it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pcamflow.errors import PcamflowError
from pcamflow.io import write_text

MAIN = Path("snellius") / "config.yaml"  # relative to the profiles directory
VARIANT_MARK = "# variant of profiles/snellius/config.yaml"  # a variant's header holds this line
_BODY_START = re.compile(r"^__use_yte__:", re.M)
_SITE_BLOCK = re.compile(r"^  # site:begin.*?^  # site:end\n", re.M | re.S)


def _parts(text: str, path: Path) -> tuple[str, str, str]:
    """(header, site block, body with the block) of a profile's text."""
    start, site = _BODY_START.search(text), _SITE_BLOCK.search(text)
    if not start or not site:
        raise PcamflowError(f"{path}: no `__use_yte__:` line or no `# site:begin` ... `# site:end` block")
    return text[: start.start()], site[0], text[start.start() :]


def render_variant(main_text: str, variant_text: str, main_path: Path, variant_path: Path) -> str:
    """The variant as it must read: its header and site block, everything else the main profile's."""
    _, _, main_body = _parts(main_text, main_path)
    header, site, _ = _parts(variant_text, variant_path)
    return header + _SITE_BLOCK.sub(lambda _: site, main_body, count=1)


def variants(profiles_dir: Path) -> list[Path]:
    return sorted(p for p in profiles_dir.glob("*/config.yaml") if VARIANT_MARK in p.read_text())


def sync(profiles_dir: str | Path, check: bool = False) -> list[Path]:
    """Variants whose text differs from what the main profile makes of them; rewritten unless check."""
    profiles_dir = Path(profiles_dir)
    main_path = profiles_dir / MAIN
    main_text = main_path.read_text()
    stale = []
    for path in variants(profiles_dir):
        text = path.read_text()
        wanted = render_variant(main_text, text, main_path, path)
        if wanted != text:
            stale.append(path)
            if not check:
                write_text(path, wanted)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcamflow.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles_dir", nargs="?", default="profiles", help="default: profiles")
    parser.add_argument("--check", action="store_true", help="only list out-of-date variants (exit 1 if any)")
    args = parser.parse_args(argv)
    try:
        stale = sync(args.profiles_dir, check=args.check)
    except (PcamflowError, OSError) as err:
        print(f"pcamflow.profiles: error: {err}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'rewritten from ' + str(MAIN)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
