"""Image fixtures: a tiny random class-conditioned UNet base and real 8x8 digit PNGs (scikit-learn's, on disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunelab.fsutil import atomic_dir
from tunelab.images.base import raw_digits
from tunelab.images.data import png_bytes
from tunelab.images.unet import ImageMeta, new_unet, noise_schedule, save_base, small_unet_config


def build_tiny_base(path: Path, classes: list[str], slots: int = 4, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    unet = new_unet(small_unet_config(8, 1, slots, width=8))
    with atomic_dir(path) as tmp:
        save_base(unet, noise_schedule(), ImageMeta(list(classes), slots, 8, 1, {"by": "test"}), tmp)
    return path


def write_digits(root: Path, per_class: dict[str, int], start: int = 0) -> Path:
    """`root/<digit>/<n>.png`: `per_class[d]` real digit images of each digit d, from index `start` on."""
    raw, labels = raw_digits()
    for d, n in per_class.items():
        idx = [i for i, y in enumerate(labels) if y == d][start : start + n]
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in idx:
            (root / d / f"{i:04d}.png").write_bytes(png_bytes(raw[i][:, :, None]))
    return root


def grey(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 1), value, dtype=np.uint8)


@pytest.fixture
def image_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private tunelab home: judges and models cached by a test stay in it."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("imgbase") / "base", ["0", "1"])


def build_tiny_pipeline(path: Path, words: list[str], seed: int = 0) -> Path:
    """A Stable Diffusion-style pipeline directory with random tiny parts: CLIP text encoder, word-level
    tokenizer, VAE (16x16 RGB <-> 4x8x8 latents), cross-attention UNet; saved by diffusers' own pipeline."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=8
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8,
        sample_size=16,
    )
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    return path
