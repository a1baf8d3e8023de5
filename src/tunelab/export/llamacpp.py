"""llama.cpp as the exports' independent runtime, with one workaround, and its OpenAI server for the bench.

On CPUs with AMX, llama.cpp 0.3.36 (llama-cpp-python's build of it) puts q8_0 and q4_K weights in its AMX /
repacked "extra" buffers, and `llama_decode` then crashes (segmentation fault) on this project's machine, on
the default model's q8_0 and q4_k_m GGUFs and on a tiny random model's q8_0 (f16 runs). Loading with
`use_extra_bufts = false` (what llama.cpp's `--no-extra-bufts` does) runs them, on the plain CPU kernels.
llama-cpp-python does not expose that parameter, so `model_params()` patches its default model parameters
while a `Llama` is constructed; only where the CPU has AMX.

`python -m tunelab.export.llamacpp ARGS` runs `llama_cpp.server` (its OpenAI-compatible server) with the same
workaround: `tunelab bench export` times llama.cpp through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def needs_workaround() -> bool:
    from tunelab.hardware import cpu_flags

    return any(f.startswith("amx") for f in cpu_flags())


@contextlib.contextmanager
def model_params() -> Iterator[None]:
    """While inside: llama-cpp-python's `Llama` loads models without llama.cpp's extra buffer types (on AMX)."""
    if not needs_workaround():
        yield
        return
    import llama_cpp
    import llama_cpp.llama as llama_module

    orig = llama_cpp.llama_model_default_params

    def patched() -> Any:
        p = orig()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = orig


def load(path: str, **kwargs: Any) -> Any:
    from llama_cpp import Llama

    with model_params():
        return Llama(model_path=path, **kwargs)


if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    with model_params():
        main()
