"""The model host: the base model, its tokenizer, the adapters (lazily loaded, LRU, checked against a manifest)
and the engine that decodes for them. It knows nothing about HTTP."""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, ModelError
from tunelab.serve.config import ServeConfig, lean_weights
from tunelab.serve.engine import Engine
from tunelab.serve.logprobs import TokenText


class Host:
    """The model, its tokenizer, the adapters (lazily loaded, LRU, checked against a manifest) and the engine."""

    def __init__(self, cfg: ServeConfig) -> None:
        from tunelab.evaluate.generation import eos_ids
        from tunelab.models.loading import check_model_spec, load_model, load_tokenizer, resolve_model

        check_model_spec(cfg.model)
        for name, path in cfg.adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ModelError(f"adapter {name!r}: not a PEFT adapter directory", file=path, field="--adapter")
        self.cfg = cfg
        self.resolved = resolve_model(cfg.model)
        self.name = self.resolved.name
        self.tok = load_tokenizer(self.resolved.path)
        self.token_text = TokenText(self.tok)  # tokens as log-probability entries show them
        self.engine: Engine
        self.runner: Any
        if cfg.backend == "vllm":
            self._vllm(cfg)
        else:
            model = load_model(self.resolved.path)
            self.context = cfg.max_context or _positions(model.config)
            self.vocab = _vocab(model.config, self.tok)
            self.runner = self._runner(model, cfg)
            self.engine = Engine(
                model,
                max_batch=cfg.max_batch,
                max_queue=cfg.max_queue,
                eos_ids=frozenset(eos_ids(model, self.tok)),
                runner=self.runner,
            )
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.adapter_lock = threading.Lock()
        self.registered: dict[str, Path] = {}  # adapters added while serving (fine-tuning jobs' models)

    def _vllm(self, cfg: ServeConfig) -> None:
        """vLLM's engine behind tunelab's interface; the weights are read by vLLM, not loaded here."""
        from transformers import AutoConfig, GenerationConfig

        from tunelab.evaluate.generation import eos_ids_of
        from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine, build_llm

        path = Path(self.resolved.path)
        conf = AutoConfig.from_pretrained(path)
        self.context = cfg.max_context or _positions(conf)
        self.vocab = _vocab(conf, self.tok)
        try:
            gc = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            gc = None
        adapters = {k: Path(v) for k, v in cfg.adapters.items()}
        llm = build_llm(path, context=self.context, max_batch=cfg.max_batch, adapters=adapters,
                        max_loras=cfg.adapter_cache, extra=cfg.vllm)  # fmt: skip
        self.runner = VLLMAdapters(llm, str(cfg.vllm.get("dtype", "auto")))
        self.engine = VLLMEngine(llm, self.runner, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                 eos_ids=frozenset(eos_ids_of(self.tok, gc)))  # fmt: skip

    @staticmethod
    def _runner(model: Any, cfg: ServeConfig) -> Any:
        """The lean decoder when it can run the model and every configured adapter, else transformers."""
        from tunelab.serve.engine import make_runner
        from tunelab.serve.lean import LeanModel, adapter_supported

        kind = cfg.engine
        if kind == "auto":
            why = LeanModel.supports(model) or next(
                (f"adapter {n}: {w}" for n, p in cfg.adapters.items() if (w := adapter_supported(Path(p)))), None
            )
            if why:
                print(f"lean decoder not used ({why}): decoding with the transformers forward", file=sys.stderr,
                      flush=True)  # fmt: skip
                kind = "hf"
        quantize = None if kind == "hf" and cfg.quantize == "auto" else lean_weights(cfg.quantize)
        if cfg.quantize == "auto" and quantize:
            why = "this CPU multiplies bf16 in hardware" if quantize == "bf16" else "no bf16 units on this CPU"
            print(f"lean decoder with {quantize} weights ({why}; --quantize none for fp32)", file=sys.stderr,
                  flush=True)  # fmt: skip
        try:
            runner = make_runner(model, kind=kind, max_rows=cfg.max_batch, quantize=quantize)
        except ValueError as e:
            raise ConfigError(str(e), field="engine" if "lean" in str(e) else "quantize") from None
        if getattr(runner, "kernel_note", None):
            print(
                f"bf16 products through oneDNN only: tunelab's bf16 kernel not used ({runner.kernel_note})",
                file=sys.stderr,
                flush=True,
            )
        return runner

    def models(self) -> list[str]:
        """The models every key may see: the base and the configured adapters."""
        return [self.name, *self.cfg.adapters]

    def adapter_path(self, name: str) -> Path | None:
        if name in self.cfg.adapters:
            return Path(self.cfg.adapters[name])
        return self.registered.get(name)

    def register(self, name: str, path: Path) -> None:
        """Serve the adapter at `path` as `name` from now on (loaded on first use)."""
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name!r}: not a PEFT adapter directory", file=path)
        with self.adapter_lock:
            self.registered[name] = path

    def ensure_adapter(self, name: str) -> None:
        """Load `name` (verified) if it is not loaded; evict the least recently used beyond the cache size."""
        with self.adapter_lock:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return
            path = self.adapter_path(name)
            if path is None:
                raise ModelError(f"no adapter named {name!r}")
            verify_adapter(path, require=self.cfg.require_manifest)
            eng = self.engine
            with eng.lock:  # between decoding steps
                try:
                    self.runner.load_adapter(path, name)
                except (ValueError, KeyError) as e:
                    raise ModelError(f"cannot load adapter: {e}", file=path) from None
                self.loaded[name] = path
                busy = {r.req.adapter for r in eng.rows}
                while len(self.loaded) > self.cfg.adapter_cache:
                    old = next((a for a in self.loaded if a not in busy and a != name), None)
                    if old is None:
                        break
                    self.runner.delete_adapter(old)
                    del self.loaded[old]


def _positions(conf: Any) -> int:
    """A model config's context length (2048 where it says none)."""
    return int(getattr(conf, "max_position_embeddings", 2048) or 2048)


def _vocab(conf: Any, tok: Any) -> int:
    """The width of the model's logits: its config's vocab_size (a multimodal config's text part), else the
    tokenizer's size."""
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    return int(getattr(text, "vocab_size", None) or len(tok))


def verify_adapter(path: Path, *, require: bool) -> None:
    """Check the adapter's files against a manifest: `<dir>/MANIFEST` or the run's `manifest.json`."""
    from tunelab.fsutil import sha256_file

    entries: dict[str, str] = {}
    m = path / "MANIFEST"
    run_manifest = path.parent / "manifest.json"
    if m.is_file():
        data = json.loads(m.read_text())
        for f in data.get("files", []):
            entries[str(f["path"])] = f["sha256"]
    elif run_manifest.is_file():
        data = json.loads(run_manifest.read_text())
        prefix = path.name + "/"
        for f in data.get("outputs", []):
            if str(f.get("path", "")).startswith(prefix):
                entries[str(f["path"])[len(prefix) :]] = f["sha256"]
    if not entries:
        if require:
            raise ModelError("no manifest lists this adapter's files (require_manifest is on)", file=path)
        return
    for rel, digest in entries.items():
        p = path / rel
        if not p.is_file() or sha256_file(p) != digest:
            raise ModelError(f"adapter file {rel} does not match its manifest (changed or damaged)", file=path)
