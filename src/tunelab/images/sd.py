"""Text-conditioned bases: a Stable Diffusion-style pipeline directory on disk (model_index.json, unet/,
vae/, text_encoder/, tokenizer/, scheduler/), the layout `StableDiffusionPipeline.save_pretrained` writes.

The UNet (`UNet2DConditionModel`) is fine-tuned with LoRA in the VAE's latent space, conditioned on the text
encoder's hidden states. The VAE and the text encoder are frozen, so each training image is encoded to latents
once and each distinct caption to hidden states once, before the first step (diffusers' example script encodes
both again at every step). Sampling is DDIM with classifier-free guidance, decoded by the VAE.

Nothing is fetched: every part is loaded from the directory with the class its model_index.json names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import ModelError
from tunelab.images.diffusion import ddim_scheduler, denoise, model_device, start_noise


def is_pipeline(path: Path) -> bool:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and "text_encoder" in index and "vae" in index


@dataclass
class SDParts:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    resolution: int  # pixels a side: the UNet's latent size times the VAE's downscale

    @property
    def scaling(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))


def load_part(path: Path, name: str) -> Any:
    """One part of a pipeline directory, loaded with the class its model_index.json names (nothing fetched)."""
    import diffusers
    import transformers

    index = json.loads((path / "model_index.json").read_text())
    lib, cls = index.get(name, [None, None])
    module = transformers if lib == "transformers" else diffusers
    if cls is None or not hasattr(module, cls):
        raise ModelError(f"model_index.json names {lib}.{cls} for {name}, which is not installed", file=path)
    try:
        part = getattr(module, cls).from_pretrained(str(path / name), local_files_only=True)
    except OSError as e:
        raise ModelError(f"cannot load the pipeline's {name}: {e}", file=path) from e
    if hasattr(part, "requires_grad_"):  # the models; frozen unless a training loop says otherwise
        part.requires_grad_(False).eval()
    return part


def load_pipeline(path: Path) -> SDParts:
    import torch
    from diffusers import DDPMScheduler

    unet, vae = load_part(path, "unet"), load_part(path, "vae")
    text_encoder, tokenizer = load_part(path, "text_encoder"), load_part(path, "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    vae.to(device)  # frozen encoders work where the GPU is; the UNet is moved by the training loop
    text_encoder.to(device)
    return SDParts(unet, vae, text_encoder, tokenizer, scheduler, int(size) * _downscale(vae))


def _downscale(vae: Any) -> int:
    """How many pixels a side one latent stands for."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def encode_text(parts: SDParts, texts: list[str]) -> Any:
    """(N, tokens, dim) hidden states, each distinct text encoded once."""
    import torch

    tok = parts.tokenizer
    length = min(int(getattr(tok, "model_max_length", 77) or 77), 77)
    distinct = sorted(set(texts))
    with torch.inference_mode():
        ids = tok(distinct, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        hidden = parts.text_encoder(ids.to(model_device(parts.text_encoder)))[0].cpu()
    row = {t: i for i, t in enumerate(distinct)}
    return hidden[[row[t] for t in texts]].clone()


def encode_images(parts: SDParts, images: Any, batch: int = 16) -> Any:
    """Latents (the VAE's mean, scaled) of (N, 3, H, W) images in [-1, 1]; computed once, before training."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(model_device(parts.vae))
            out.append((parts.vae.encode(x).latent_dist.mean * parts.scaling).cpu())
    return torch.cat(out).clone()


def sample_text(
    parts: SDParts,
    unet: Any,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = 25,
    guidance: float = 5.0,
    batch: int = 8,
) -> Any:
    """DDIM with classifier-free guidance, decoded: one (3, H, W) image in [-1, 1] per (prompt, seed)."""
    import torch

    ddim = ddim_scheduler(parts.scheduler.config, steps)
    down = _downscale(parts.vae)
    shape = (parts.unet.config.in_channels, parts.resolution // down, parts.resolution // down)
    device, vae_device = model_device(unet), model_device(parts.vae)
    out = []
    with torch.inference_mode():
        empty = encode_text(parts, [""]).to(device)
        for i in range(0, len(prompts), batch):
            p = prompts[i : i + batch]
            cond = encode_text(parts, p).to(device)
            both = torch.cat([empty.expand(len(p), -1, -1), cond])

            def eps(x: Any, t: Any, both: Any = both) -> Any:  # classifier-free guidance
                eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
                return eps_u + guidance * (eps_c - eps_u)

            x = denoise(ddim, start_noise(seeds[i : i + batch], shape).to(device), eps)
            out.append(parts.vae.decode(x.to(vae_device) / parts.scaling).sample.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def class_like(texts: list[str], most: int = 50) -> bool:
    """Captions a judge can be trained on as classes: few distinct ones, each with at least 2 images."""
    counts = np.unique(np.array(texts, dtype=object), return_counts=True)[1] if texts else np.array([])
    return 2 <= len(counts) <= most and bool((counts >= 2).all())
