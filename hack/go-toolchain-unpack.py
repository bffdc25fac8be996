#!/usr/bin/env python3
"""Unpack a Go toolchain module zip (golang.org/toolchain@v0.0.1-goX.linux-ARCH) after checking its h1 hash.

    go-toolchain-unpack.py ZIP H1 DEST

h1 is the Go checksum database's hash of a module zip: base64(sha256 of the lines "<sha256 hex>  <name>\\n"
for every file, sorted by name). DEST receives the toolchain (DEST/bin/go), executables made executable as the
go command does when it installs a toolchain; it is written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path


def h1(archive: zipfile.ZipFile) -> str:
    lines = []
    for name in sorted(archive.namelist()):
        lines.append(f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n")
    return "h1:" + base64.b64encode(hashlib.sha256("".join(lines).encode()).digest()).decode()


def main(zip_path: str, expected: str, dest: str) -> int:
    target = Path(dest)
    with zipfile.ZipFile(zip_path) as archive:
        if h1(archive) != expected:
            print(f"h1 mismatch: got {h1(archive)}, want {expected}", file=sys.stderr)
            return 1
        first = archive.namelist()[0]  # golang.org/toolchain@v0.0.1-goX.linux-ARCH/...
        prefix = first[: first.index("/", first.index("@")) + 1]
        tmp = Path(tempfile.mkdtemp(prefix=".go-toolchain.", dir=target.parent))
        try:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                relative = info.filename[len(prefix) :]
                out = (tmp / relative).resolve()
                if tmp.resolve() not in out.parents:
                    raise ValueError(f"unsafe path in the zip: {info.filename}")
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                if relative.startswith(("bin/", "pkg/tool/")):
                    out.chmod(0o755)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
