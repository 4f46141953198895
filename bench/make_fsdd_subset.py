"""Write the bundled Free Spoken Digit Dataset subset ``data/fsdd`` from a copy of the FSDD recordings.

    python bench/make_fsdd_subset.py --source ../shared/data/fsdd/recordings --out data/fsdd

Class-per-subfolder splits, one speaker held out (a split that mixes a speaker's recordings into train and
validation measures memorised voices, not transfer to a new one):

* ``train/<digit>/``: speakers george, jackson, nicolas and yweweler, recordings 0-9 of each digit (400 files);
* ``validation/<digit>/``: speaker theo, recordings 0-9 of each digit (100 files).

Files are copied byte for byte under their upstream names (``{digit}_{speaker}_{index}.wav``: 8 kHz mono 16-bit
WAV). FSDD: CC BY-SA 4.0, Jackson et al., https://github.com/Jakobovski/free-spoken-digit-dataset (commit 26eb9aa).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SPLITS = {"train": ("george", "jackson", "nicolas", "yweweler"), "validation": ("theo",)}
DIGITS = range(10)
INDICES = range(10)


def plan(source: Path) -> list[tuple[Path, str]]:
    """(source file, path under the output folder) for every file of the subset; one error line if any is missing."""
    files, missing = [], []
    for split, speakers in SPLITS.items():
        for speaker in speakers:
            for digit in DIGITS:
                for index in INDICES:
                    name = f"{digit}_{speaker}_{index}.wav"
                    (files if (source / name).is_file() else missing).append((source / name, f"{split}/{digit}/{name}"))
    if missing:
        sys.exit(f"error: {len(missing)} recording(s) missing from {source}, e.g. {missing[0][0].name}: pass "
                 "--source the FSDD 'recordings' folder")
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/fsdd/recordings"),
                        help="the FSDD recordings folder ({digit}_{speaker}_{index}.wav)")
    parser.add_argument("--out", type=Path, default=Path("data/fsdd"), help="the folder to write (replaced)")
    args = parser.parse_args(argv)
    files = plan(args.source)
    for split in SPLITS:
        shutil.rmtree(args.out / split, ignore_errors=True)  # a rerun leaves no file of an older subset
    for src, relative in files:
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    size = sum(p.stat().st_size for p in args.out.rglob("*.wav"))
    counts = ", ".join(f"{split} {sum(1 for _, r in files if r.startswith(split + '/'))}" for split in SPLITS)
    print(f"wrote {len(files)} files ({counts}; {size / 1e6:.1f} MB) to {args.out}")


if __name__ == "__main__":
    main()
