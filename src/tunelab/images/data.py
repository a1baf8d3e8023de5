"""Image datasets: a folder of class subfolders, or JSONL `{"image": path, "label"|"text": ...}`.

Each image is decoded in full (a truncated or corrupt file fails here, not in training), turned upright by its
EXIF orientation, converted to the run's mode (L or RGB), centre-cropped to a square and resized to the run's
resolution. What cannot be read is returned as a `Rejected` with the file, line and field, for the quarantine.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.formats import Rejected
from tunelab.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
MAX_PIXELS = 64_000_000  # larger images are refused, not decoded (decompression bombs)


@dataclass
class ImageItem:
    file: str  # the image file, as the user named it
    line: int  # the JSONL line; 0 for an image found in a folder
    label: str
    pixels: np.ndarray  # uint8, (H, W, C) at the run's resolution and mode
    file_sha256: str
    source: str  # the folder or JSONL file it was listed in
    original: str = ""  # the file's own size and mode, e.g. "8x8 L"
    path: str = ""  # the image file itself (for a JSONL record, `file` is the listing)

    @property
    def pixel_sha256(self) -> str:
        return hashlib.sha256(self.pixels.tobytes()).hexdigest()


@dataclass
class ImageSet:
    items: list[ImageItem] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # every file read: listings and images, for the manifest


def normalise(data: bytes, resolution: int, channels: int) -> tuple[np.ndarray, str]:
    """Decode, orient, convert, centre-crop and resize; raises ValueError with a reason a person can read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise ValueError(f"{probe.width}x{probe.height} pixels is over the {MAX_PIXELS:,} limit")
            probe.verify()  # structure and checksums (PNG), without decoding
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # decodes every byte: a truncated file fails here
            original = f"{opened.width}x{opened.height} {opened.mode}"
            im: Image.Image = ImageOps.exif_transpose(opened)
            if im.mode in ("RGBA", "LA", "P"):  # transparency onto white, as a viewer shows it
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("L" if channels == 1 else "RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side))
            if side != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError as e:
        if data.startswith(_MAGIC):  # an image format's signature, then bytes that do not parse
            raise ValueError("corrupt or truncated image (its header names a format, its data does not parse)") from e
        raise ValueError("not an image Pillow can read") from e
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt or truncated image ({e})") from e
    return (arr[:, :, None] if arr.ndim == 2 else arr), original


def read_image_set(path: Path, resolution: int, channels: int, min_side: int = 8) -> ImageSet:
    """All images listed by `path` (a folder or a .jsonl file), normalised; unreadable ones rejected."""
    out = ImageSet()
    if path.is_dir():
        entries = _folder_entries(path)
    elif path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise DataError("an image dataset is a folder of class subfolders or a .jsonl file", file=path)
        out.files.append(path)
        entries = _jsonl_entries(path, out.rejected)
    else:
        raise DataError("no such file or folder", file=path)
    for image_path, line, label, shown in entries:
        try:
            data = image_path.read_bytes()
        except OSError as e:
            out.rejected.append(Rejected(shown, line, "image", f"cannot read the image: {e.strerror or e}"))
            continue
        out.files.append(image_path)
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as probe:
                small = min(probe.size) < min_side
                size = probe.size
        except Exception:  # decoding errors are named by normalise() below
            small, size = False, (0, 0)
        if small:
            out.rejected.append(
                Rejected(shown, line, "image", f"{size[0]}x{size[1]} is smaller than {min_side} pixels a side")
            )
            continue
        try:
            pixels, original = normalise(data, resolution, channels)
        except ValueError as e:
            out.rejected.append(Rejected(shown, line, "image", str(e)))
            continue
        sha = hashlib.sha256(data).hexdigest()
        out.items.append(ImageItem(shown, line, label, pixels, sha, str(path), original, str(image_path)))
    return out


def _folder_entries(root: Path) -> list[tuple[Path, int, str, str]]:
    """`root/<label>/<image>`: the subfolder names the class. Images directly in root have no class."""
    entries = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SUFFIXES or any(s.startswith(".") for s in p.parts):
            continue
        rel = p.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 else ""
        entries.append((p, 0, label, str(p)))
    if not entries:
        raise DataError(f"no images ({', '.join(SUFFIXES)}) in this folder", file=root)
    return entries


def _jsonl_entries(path: Path, rejected: list[Rejected]) -> list[tuple[Path, int, str, str]]:
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec: Any = json.loads(raw)
            except ValueError as e:
                rejected.append(Rejected(str(path), n, "", f"not valid JSON: {e}", raw[:200]))
                continue
            if not isinstance(rec, dict):
                rejected.append(Rejected(str(path), n, "", "a record must be a JSON object", raw[:200]))
                continue
            image = rec.get("image")
            if not isinstance(image, str) or not image:
                rejected.append(Rejected(str(path), n, "image", "missing: the image's path (a string)", raw[:200]))
                continue
            label = rec.get("label", rec.get("text", ""))
            if isinstance(label, int) and not isinstance(label, bool):
                label = str(label)
            if not isinstance(label, str):
                field_name = "label" if "label" in rec else "text"
                rejected.append(Rejected(str(path), n, field_name, "must be a string", raw[:200]))
                continue
            p = Path(image)
            entries.append((p if p.is_absolute() else path.parent / p, n, label.strip(), str(path)))
    return entries


def stack(items: list[ImageItem]) -> np.ndarray:
    return np.stack([it.pixels for it in items])


def to_tensor(pixels: np.ndarray) -> Any:
    """(N, H, W, C) uint8 to (N, C, H, W) float32 in [-1, 1], the range the diffusion models are trained in."""
    import torch

    arr = pixels.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_uint8(x: Any) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] back to (N, H, W, C) uint8."""
    import torch

    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(dtype=torch.uint8)
    return np.ascontiguousarray(arr.permute(0, 2, 3, 1).cpu().numpy())


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
