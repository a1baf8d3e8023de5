"""The image models a server generates with: one class-conditioned base and its adapters, by served name.

A prompt names the class to draw. The class is the one whose name the prompt is, or contains as a whole word
("7", "a handwritten 7"); a prompt that names none or several of the model's classes is refused with the list,
rather than drawn from a guess. Generation runs in a worker thread, one request at a time (it is CPU-bound and
would otherwise slow the text engine's decoding more than it gains).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ModelError
from tunelab.serve.config import ImagesConfig

ADAPTERS_KEPT = 4


@dataclass
class Generated:
    pngs: list[bytes]
    label: str
    size: str
    seeds: list[int]


class ImageHost:
    def __init__(self, cfg: ImagesConfig) -> None:
        from tunelab.images.sd import is_pipeline, load_pipeline
        from tunelab.images.unet import ImageMeta, read_meta

        self.cfg = cfg
        self.base_dir = self._base_dir()
        self.base_name = self.base_dir.name
        self.parts: Any = None  # a text-conditioned pipeline's parts
        if is_pipeline(self.base_dir):
            self.parts = load_pipeline(self.base_dir)
            base_meta = ImageMeta([], 0, self.parts.resolution, 3, {}, "text")
        else:
            base_meta = read_meta(self.base_dir)
        self.metas = {self.base_name: base_meta}  # each model's classes, size and conditioning, read once
        for name, path in cfg.adapters.items():  # a wrong adapter path fails at start, not per request
            if not any((Path(path) / f).is_file() for f in ("adapter_config.json", "unet/config.json")):
                raise ModelError(f"image adapter {name!r} is neither a PEFT adapter nor a full UNet", file=path)
            self.metas[name] = read_meta(Path(path))
        self._lock = threading.Lock()
        self._models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # the base, and adapters LRU

    def _base_dir(self) -> Path:
        if self.cfg.base:
            path = Path(self.cfg.base).expanduser()
            if not path.is_dir():
                raise ModelError("no such image base directory", file=path, field="images.base")
            return path
        from tunelab.images.base import default_image_base

        return default_image_base()

    def models(self) -> list[str]:
        return list(self.metas)

    def classes(self, model: str) -> list[str]:
        return list(self.metas[model].classes)

    def text(self, model: str) -> bool:
        """Whether `model` draws what its prompt says (a pipeline's text encoder) rather than a class it names."""
        return bool(self.metas[model].conditioning == "text")

    def size(self, model: str) -> str:
        m = self.metas[model]
        return f"{m.resolution}x{m.resolution}"

    def _model(self, name: str) -> tuple[Any, Any]:
        """(unet, noise scheduler) of a served model; the base stays loaded, adapters LRU (ADAPTERS_KEPT)."""
        if name not in self._models:
            loaded = self._load(name)
            adapters = [k for k in self._models if k != self.base_name]  # least recently used first
            if name != self.base_name and len(adapters) >= ADAPTERS_KEPT:
                del self._models[adapters[0]]
            self._models[name] = loaded
        self._models.move_to_end(name)
        return self._models[name]

    def _load(self, name: str) -> tuple[Any, Any]:
        from tunelab.images.unet import load_base, load_tuned

        if self.parts is None:
            if name == self.base_name:
                unet, scheduler, _ = load_base(self.base_dir)
            else:
                unet, scheduler, _ = load_tuned(self.base_dir, Path(self.cfg.adapters[name]))
            return unet, scheduler
        if name == self.base_name:
            return self.parts.unet, self.parts.scheduler
        import copy

        from peft import PeftModel

        fresh = copy.deepcopy(self.parts.unet)  # peft adds the adapter in place: the base stays clean
        return PeftModel.from_pretrained(fresh, str(self.cfg.adapters[name])).eval(), self.parts.scheduler

    def generate(self, model: str, label: str, n: int, seed: int) -> Generated:
        from tunelab.images.data import png_bytes, to_uint8
        from tunelab.images.diffusion import sample
        from tunelab.images.sd import sample_text

        meta = self.metas[model]
        seeds = [seed + i for i in range(n)]
        with self._lock:
            unet, scheduler = self._model(model)
            if self.parts is not None:
                x = sample_text(self.parts, unet, [label] * n, seeds, steps=self.cfg.sample_steps)
            else:
                size = (meta.channels, meta.resolution, meta.resolution)
                slots = [meta.classes.index(label)] * n
                x = sample(unet, scheduler.config, slots, seeds, steps=self.cfg.sample_steps, size=size)
        return Generated([png_bytes(a) for a in to_uint8(x)], label, self.size(model), seeds)


def class_in(prompt: str, classes: list[str]) -> str | list[str]:
    """The one class `prompt` names (exactly, or as a whole word), else every class it names (zero or several)."""
    p = prompt.strip().casefold()
    exact = [c for c in classes if c.casefold() == p]
    if exact:
        return exact[0]
    named = [c for c in classes if re.search(rf"(?<!\w){re.escape(c.casefold())}(?!\w)", p)]
    return named[0] if len(named) == 1 else named
