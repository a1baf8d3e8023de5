"""The two things a diffusion UNet is used for: the training loss (predict the added noise) and sampling (DDIM).

Both take their randomness from explicit generators, never the global RNG: a training step's noise and
timesteps are a function of (seed, step, rank), so a resumed run draws exactly what the uninterrupted one would
have; and a sample is a function of its own seed, so base and tuned models asked for the same (class, seed) start
from the same noise, which is what makes their comparison paired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def step_generator(seed: int, step: int, rank: int = 0) -> Any:
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + rank)


def noise_loss(unet: Any, scheduler: Any, x0: Any, cond: dict[str, Any], gen: Any) -> Any:
    """Mean squared error between the added noise and the UNet's prediction of it, at uniform random timesteps.
    `cond`: the UNet's conditioning keyword (`class_labels`, or `encoder_hidden_states` for text)."""
    import torch
    import torch.nn.functional as F

    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, **cond).sample
    return F.mse_loss(pred.float(), noise)


def sample(
    unet: Any,
    scheduler_config: Any,
    labels: list[int],
    seeds: list[int],
    *,
    steps: int = 25,
    batch: int = 64,
    size: tuple[int, int, int] = (1, 16, 16),
) -> Any:
    """DDIM (eta 0, deterministic given the start noise): one image per (label, seed), (N, C, H, W) in [-1, 1]."""
    import torch

    ddim = ddim_scheduler(scheduler_config, steps)
    device = model_device(unet)
    out = []
    with torch.inference_mode():
        for i in range(0, len(labels), batch):
            lab = torch.tensor(labels[i : i + batch], device=device)
            x = start_noise(seeds[i : i + batch], size).to(device)  # drawn on the CPU: the same on any device

            def eps(x: Any, t: Any, lab: Any = lab) -> Any:
                return unet(x, t, class_labels=lab).sample

            x = denoise(ddim, x, eps)
            out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out) if out else torch.empty((0, *size))


def ddim_scheduler(scheduler_config: Any, steps: int) -> Any:
    """A DDIM scheduler (eta 0) on the training schedule's config, set to `steps` steps."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler_config)
    ddim.set_timesteps(steps)
    return ddim


def denoise(ddim: Any, x: Any, eps: Callable[[Any, Any], Any]) -> Any:
    """From start noise `x` to a sample: at each of the scheduler's timesteps, `eps(x, t)` predicts the noise."""
    for t in ddim.timesteps:
        x = ddim.step(eps(x, t), t, x).prev_sample
    return x


def start_noise(seeds: list[int], size: tuple[int, ...]) -> Any:
    """One standard-normal tensor of `size` per seed, each from its own CPU generator."""
    import torch

    return torch.stack([torch.randn(size, generator=torch.Generator().manual_seed(s)) for s in seeds])


def model_device(model: Any) -> Any:
    import torch

    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
