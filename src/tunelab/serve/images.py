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
            self.meta = ImageMeta([], 0, self.parts.resolution, 3, {}, "text")
        else:
            self.meta = read_meta(self.base_dir)
        for name, path in cfg.adapters.items():  # a wrong adapter path fails at start, not per request
            if not any((Path(path) / f).is_file() for f in ("adapter_config.json", "unet/config.json")):
                raise ModelError(f"image adapter {name!r} is neither a PEFT adapter nor a full UNet", file=path)
            read_meta(Path(path))
        self._lock = threading.Lock()
        self._base: Any = None
        self._tuned: OrderedDict[str, Any] = OrderedDict()

    def _base_dir(self) -> Path:
        if self.cfg.base:
            path = Path(self.cfg.base).expanduser()
            if not path.is_dir():
                raise ModelError("no such image base directory", file=path, field="images.base")
            return path
        from tunelab.images.base import default_image_base

        return default_image_base()

    def models(self) -> list[str]:
        return [self.base_name, *self.cfg.adapters]

    def _meta(self, model: str) -> Any:
        return self.meta if model == self.base_name else _meta(self.cfg.adapters[model])

    def classes(self, model: str) -> list[str]:
        return list(self._meta(model).classes)

    def text(self, model: str) -> bool:
        """Whether `model` draws what its prompt says (a pipeline's text encoder) rather than a class it names."""
        return bool(self._meta(model).conditioning == "text")

    def size(self, model: str) -> str:
        m = self._meta(model)
        return f"{m.resolution}x{m.resolution}"

    def _model(self, name: str) -> tuple[Any, Any]:
        from tunelab.images.unet import load_base, load_tuned

        if self.parts is not None:
            return self._text_model(name), self.parts.scheduler
        if name == self.base_name:
            if self._base is None:
                self._base = load_base(self.base_dir)
            return self._base[0], self._base[1]
        if name not in self._tuned:
            if len(self._tuned) >= ADAPTERS_KEPT:
                self._tuned.popitem(last=False)
            self._tuned[name] = load_tuned(self.base_dir, Path(self.cfg.adapters[name]))
        self._tuned.move_to_end(name)
        return self._tuned[name][0], self._tuned[name][1]

    def _text_model(self, name: str) -> Any:
        import copy

        from peft import PeftModel

        if name == self.base_name:
            return self.parts.unet
        if name not in self._tuned:
            if len(self._tuned) >= ADAPTERS_KEPT:
                self._tuned.popitem(last=False)
            fresh = copy.deepcopy(self.parts.unet)  # peft adds the adapter in place: the base stays clean
            self._tuned[name] = PeftModel.from_pretrained(fresh, str(self.cfg.adapters[name])).eval()
        self._tuned.move_to_end(name)
        return self._tuned[name]

    def generate(self, model: str, label: str, n: int, seed: int) -> Generated:
        from tunelab.images.data import png_bytes, to_uint8
        from tunelab.images.diffusion import sample
        from tunelab.images.sd import sample_text

        with self._lock:
            unet, scheduler = self._model(model)
            meta = self._meta(model)
            seeds = [seed + i for i in range(n)]
            size = (meta.channels, meta.resolution, meta.resolution)
            if self.parts is not None:
                x = sample_text(self.parts, unet, [label] * n, seeds, steps=self.cfg.sample_steps)
            else:
                slots = [meta.classes.index(label)] * n
                x = sample(unet, scheduler.config, slots, seeds, steps=self.cfg.sample_steps, size=size)
            pngs = [png_bytes(a) for a in to_uint8(x)]
        return Generated(pngs, label, f"{meta.resolution}x{meta.resolution}", seeds)


def _meta(path: Path) -> Any:
    from tunelab.images.unet import read_meta

    return read_meta(Path(path))


def class_in(prompt: str, classes: list[str]) -> str | list[str]:
    """The one class `prompt` names (exactly, or as a whole word), else every class it names (zero or several)."""
    p = prompt.strip().casefold()
    exact = [c for c in classes if c.casefold() == p]
    if exact:
        return exact[0]
    named = [c for c in classes if re.search(rf"(?<!\w){re.escape(c.casefold())}(?!\w)", p)]
    return named[0] if len(named) == 1 else named
