"""`python -m tunelab.export.tools SDIST`: unpack llama.cpp's converter from llama-cpp-python's source archive.

`make export-deps` downloads the pinned llama-cpp-python source distribution, builds and installs it (pip
compiles llama.cpp for this machine), then runs this module on the same archive: it copies the
`convert_hf_to_gguf.py` / `convert_lora_to_gguf.py` scripts and the `conversion` and `gguf-py` packages they
import, which the
archive vendors at the same llama.cpp commit as the compiled library, into `gguf.tools_dir()`.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from tunelab.export.gguf import tools_dir

WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


def unpack(sdist: Path, dest: Path | None = None) -> Path:
    dest = dest or tools_dir()
    with tarfile.open(sdist) as tar, tempfile.TemporaryDirectory() as tmp:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            wanted = len(parts) == 2 and any(parts[1] == w or parts[1].startswith(w) for w in WANTED)
            if wanted and (m.isfile() or m.isdir()):
                members.append(m)
        if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
            raise SystemExit(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py in this archive")
        tar.extractall(tmp, members=members, filter="data")
        root = next(Path(tmp).glob("*/vendor/llama.cpp"))
        staged = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for w in WANTED:
            src = root / w.rstrip("/")
            if src.is_dir():
                shutil.copytree(src, staged / src.name)
            elif src.is_file():
                shutil.copy2(src, staged / src.name)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tunelab.export.tools LLAMA_CPP_PYTHON_SDIST.tar.gz")
    print(unpack(Path(sys.argv[1])))
