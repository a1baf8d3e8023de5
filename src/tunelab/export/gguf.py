"""GGUF for llama.cpp, Ollama and LM Studio, made by llama.cpp's own tools (not a tensor dump of ours).

- Conversion: llama.cpp's `convert_hf_to_gguf.py` with its matching `gguf-py`, both taken from the
  llama-cpp-python source distribution that `make export-deps` builds (so the converter, the library that
  loads the file and the parity check are one llama.cpp version). It writes the chat template and the special
  tokens into the file's metadata (`tokenizer.chat_template`, `tokenizer.ggml.eos_token_id`, ...).
- f16 and q8_0 come from the converter; q4_k_m is quantized from the f16 file by llama.cpp's
  `llama_model_quantize` (through llama-cpp-python's bindings: the same code as the `llama-quantize` tool).
- `modelfile`: an Ollama Modelfile beside the GGUF (its stop tokens; Ollama reads the chat template from the
  GGUF's metadata).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tunelab.errors import ConfigError, ModelError
from tunelab.paths import tunelab_home

QUANTS = ("f16", "q8_0", "q4_k_m")
LLAMA_CPP_VERSION = "0.3.36"  # llama-cpp-python: the version `make export-deps` builds and unpacks
_HINT = "run `make export-deps` (builds llama-cpp-python from source and unpacks llama.cpp's converter)"


def tools_dir() -> Path:
    """Where llama.cpp's converter and gguf-py are: $TUNELAB_LLAMA_CPP, else the user cache."""
    env = os.environ.get("TUNELAB_LLAMA_CPP")
    return Path(env) if env else tunelab_home() / "llama.cpp" / LLAMA_CPP_VERSION


def check_tools() -> Path:
    d = tools_dir()
    if not (d / "convert_hf_to_gguf.py").is_file() or not (d / "gguf-py" / "gguf").is_dir():
        raise ConfigError(f"llama.cpp's converter is not installed; {_HINT}", file=d, field="--format")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(f"llama-cpp-python is not installed; {_HINT}", field="--format") from None
    return d


def convert(merged_dir: Path, out_file: Path, outtype: str) -> Path:
    """`merged_dir` (a HF model directory) to a GGUF file of `outtype` (f16 | q8_0 | bf16 | f32)."""
    return _run("convert_hf_to_gguf.py", [str(merged_dir)], merged_dir, out_file, outtype)


def convert_lora(adapter: Path, base_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    """A PEFT LoRA adapter to a LoRA-only GGUF that llama.cpp applies on the base's GGUF at load time."""
    return _run("convert_lora_to_gguf.py", [str(adapter), "--base", str(base_dir)], adapter, out_file, outtype)


def _run(script: str, args: list[str], source: Path, out_file: Path, outtype: str) -> Path:
    tools = check_tools()
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tools / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(tools / script), *args, "--outfile", str(tmp), "--outtype", outtype]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
        raise ModelError(f"llama.cpp's {script} failed ({outtype}):\n{tail}", file=source, field="--format")
    os.replace(tmp, out_file)
    return out_file


def quantize(src: Path, out_file: Path, kind: str = "q4_k_m", threads: int | None = None) -> Path:
    """`src` (an f16/f32 GGUF) quantized by llama.cpp's `llama_model_quantize`."""
    check_tools()
    import llama_cpp

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelError(f"llama.cpp could not quantize to {kind} (code {rc})", file=src, field="--quantize")
    os.replace(tmp, out_file)
    return out_file


def metadata(path: Path) -> dict[str, object]:
    """The GGUF's key/value metadata that matters for parity: architecture, chat template, special tokens."""
    from gguf import GGUFReader  # the installed package (transformers' GGUF loading imports it too)

    reader = GGUFReader(str(path))
    out: dict[str, object] = {}
    for key in ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.model", "general.file_type"):  # fmt: skip
        field = reader.get_field(key)
        if field is None:
            continue
        val = field.contents()
        out[key] = val
    return out


def modelfile(gguf_name: str, stops: list[str], system: str | None = None) -> str:
    """An Ollama Modelfile for the GGUF beside it: greedy by default, the model's stop tokens."""
    lines = [f"FROM ./{gguf_name}", "PARAMETER temperature 0"]
    lines += [f'PARAMETER stop "{s}"' for s in stops if s and '"' not in s]
    if system:
        lines.append('SYSTEM """' + system.replace('"""', "'''") + '"""')
    return "\n".join(lines) + "\n"
