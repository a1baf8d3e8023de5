"""Class-conditioned diffusion UNets in diffusers' layout, and their class slots.

A base model is a directory that diffusers' own `DDPMPipeline.from_pretrained` opens:

    model_index.json  unet/{config.json, diffusion_pytorch_model.safetensors}  scheduler/scheduler_config.json

plus `tunelab_image.json`: what the class-embedding slots mean (`classes`: slot i is class `classes[i]`), the
resolution and channels, and how the weights were made. A UNet has a fixed number of class slots
(`num_class_embeds`); fine-tuning data whose class the base never saw takes the next free slot, and the slot's
embedding is trained with the LoRA adapter. The tuned model's own `tunelab_image.json` lists the classes of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, ModelError
from tunelab.fsutil import atomic_write_json

META = "tunelab_image.json"
# LoRA on the attention projections and on the ResNet blocks' convolutions and timestep(+class) projections:
# with attention alone the default 40-image fine-tune of new digit classes reached 0.31 class accuracy against
# 0.97 with the convolutions (600 steps, same rank, lr and data); see docs/images.md
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")


@dataclass
class ImageMeta:
    classes: list[str]  # slot i conditions on classes[i]
    slots: int  # num_class_embeds
    resolution: int
    channels: int
    made_by: dict[str, Any] = field(default_factory=dict)
    conditioning: str = "class"  # "class": slots of a class embedding; "text": a pipeline's text encoder

    def slot_of(self, label: str) -> int | None:
        return self.classes.index(label) if label in self.classes else None

    def with_classes(self, labels: list[str]) -> ImageMeta:
        """The same slots plus a free one for each new label (in sorted order); an error when they run out."""
        new = [c for c in sorted(set(labels)) if c not in self.classes]
        if len(self.classes) + len(new) > self.slots:
            raise ConfigError(
                f"the base model has {self.slots} class slots and {len(self.classes)} are taken; "
                f"{len(new)} new classes ({', '.join(new[:5])}) do not fit",
                field="data.train",
            )
        return ImageMeta(
            [*self.classes, *new], self.slots, self.resolution, self.channels, dict(self.made_by), self.conditioning
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "slots": self.slots,
            "resolution": self.resolution,
            "channels": self.channels,
            "made_by": self.made_by,
            "conditioning": self.conditioning,
        }


def read_meta(path: Path) -> ImageMeta:
    p = path / META
    try:
        raw = json.loads(p.read_text())
        return ImageMeta(
            [str(c) for c in raw["classes"]],
            int(raw["slots"]),
            int(raw["resolution"]),
            int(raw["channels"]),
            dict(raw.get("made_by") or {}),
            str(raw.get("conditioning", "class")),
        )
    except FileNotFoundError as e:
        raise ModelError(f"not a tunelab image model (no {META})", file=path) from e
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{META} is not valid: {e}", file=p) from e


def write_meta(path: Path, meta: ImageMeta) -> None:
    atomic_write_json(path / META, meta.to_json())


def small_unet_config(resolution: int, channels: int, slots: int, width: int = 32) -> dict[str, Any]:
    """The default architecture: 3 levels (width, 2w, 2w), attention on the two lower ones, one block each."""
    return {
        "sample_size": resolution,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": (width, 2 * width, 2 * width),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 16,
        "num_class_embeds": slots,
    }


def new_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def noise_schedule() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def save_base(unet: Any, scheduler: Any, meta: ImageMeta, out: Path) -> None:
    """Into `out` (which the caller makes atomic): the diffusers pipeline layout plus tunelab_image.json."""
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    atomic_write_json(
        out / "model_index.json",
        {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": _diffusers_version(),
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", type(scheduler).__name__],
        },
    )
    write_meta(out, meta)


def load_base(path: Path) -> tuple[Any, Any, ImageMeta]:
    """(unet, noise scheduler, meta) from a base directory; fp32, eval mode."""
    from diffusers import DDPMScheduler, UNet2DModel

    meta = read_meta(path)
    if not (path / "unet" / "config.json").is_file():
        raise ModelError("not a diffusers UNet directory (no unet/config.json)", file=path)
    unet = UNet2DModel.from_pretrained(str(path / "unet"))
    if unet.config.num_class_embeds is None:
        raise ModelError("this UNet is not class-conditioned (num_class_embeds is unset)", file=path / "unet")
    if int(unet.config.num_class_embeds) != meta.slots:
        slots = unet.config.num_class_embeds
        raise ModelError(f"{META} says {meta.slots} class slots, the UNet has {slots}", file=path)
    sched_dir = path / "scheduler"
    scheduler = DDPMScheduler.from_pretrained(str(sched_dir)) if sched_dir.is_dir() else noise_schedule()
    return unet.eval(), scheduler, meta


def add_lora(unet: Any, r: int, alpha: int, dropout: float, targets: list[str], class_embedding: bool = True) -> Any:
    """A PEFT model: LoRA on `targets`, and the class embedding (if any) trained in full: new classes need
    their slot."""
    from peft import LoraConfig, get_peft_model

    save = ["class_embedding"] if class_embedding else None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=save)
    return get_peft_model(unet, config)


def load_tuned(base: Path, adapter: Path) -> tuple[Any, Any, ImageMeta]:
    """The base with a tunelab image adapter applied (a PEFT dir with its own tunelab_image.json), or the
    fully fine-tuned UNet of a `method.kind: full` run (model/unet/)."""
    from peft import PeftModel

    unet, scheduler, _ = load_base(base)
    meta = read_meta(adapter)
    if (adapter / "unet" / "config.json").is_file():  # a full fine-tune: the whole UNet
        from diffusers import UNet2DModel

        return UNet2DModel.from_pretrained(str(adapter / "unet")).eval(), scheduler, meta
    model = PeftModel.from_pretrained(unet, str(adapter))
    return model.eval(), scheduler, meta


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)
