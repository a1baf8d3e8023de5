"""A lean decoder for serving Llama-family models (Llama, Mistral without a sliding window, Qwen2).

The transformers forward is general; for decoding one token at a time on a CPU it costs more than it
needs to: a `DynamicCache` that concatenates the whole cache at every step (a third of a batch-8 step
here), attention masks rebuilt every step, three Q/K/V and two gate/up matrix products where one will do.
This module runs the same mathematics with the model's own weights and nothing else:

- fused QKV and gate-up weights, stored for the small-batch GEMM (see `decode_layout`);
- a preallocated KV cache (rows x heads x capacity x dim per layer) written in place, one column per step;
  all rows are left-aligned to a common column, so a decoding step writes one column for every row;
- rotary tables from the model's own rotary module (every rope type transformers knows);
- per-row LoRA adapters: each adapter's low-rank product is added to the rows that asked for it;
- optional int8 weights (`quantize="int8"`): per-channel int8 weights with dynamically quantised
  activations through PyTorch's fbgemm kernels. Decoding reads every weight once per step, so a quarter of
  the bytes is most of the speed; the answers are close to, not equal to, fp32 (measured in
  `tunelab bench serve`, documented in docs/serving.md);
- optional bf16 weights (`quantize="bf16"`): half the bytes, oneDNN's bf16 products (AMX or AVX512-BF16
  where the CPU has them; elsewhere oneDNN emulates them, correct but slow), everything else in fp32;
- optional fp16 weights (`quantize="fp16"`): half the bytes, fbgemm's fp16 GEMM (weights widened to fp32 in
  the kernel, activations and sums fp32): the closest to fp32 of the three.

`LeanModel.supports(model)` says whether a model (and `adapter_supported` whether an adapter) can run here;
the engine falls back to the transformers forward otherwise.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from tunelab.hardware import cpu_vnni, fbgemm
from tunelab.kernels import ALL_ROWS

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


class Linear:
    """y = x W^T + b: fp32 weights in the decode layout, int8 per-channel weights (fbgemm, dynamic
    activations), fp16 weights (fbgemm, fp32 activations), or bf16 weights pre-packed for oneDNN (inputs
    rounded to bf16 for the product, fp32 sums, the result back in fp32). The rest of the decoder stays fp32.
    The product itself is `lean_script._linear`, the one the scripted layer loop runs."""

    def __init__(self, weight: Any, bias: Any, quantize: str | None, rows: int = 8, small: int = 0) -> None:
        import torch

        self.fmt = quantize or "fp32"  # fp32 | fp16 | bf16 | int8
        # bf16 with small > 0: products of up to `small` rows through tunelab's kernel (`tunelab.kernels`), in its
        # own layout `kw`; oneDNN's copy `w` for bigger ones, not kept when the kernel does all (ALL_ROWS: AMX)
        self.small = small if self.fmt == "bf16" else 0
        self.kw: Any = None
        self.w: Any = None
        self.out_features = int(weight.shape[0])
        w = weight.detach().float()
        b = None if bias is None else bias.detach().float().contiguous()
        self.b = b
        self.reduce_range = False
        if self.int8:
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # deprecated in favour of torchao; fbgemm's kernels are the fast ones
                warnings.simplefilter("ignore", UserWarning)  # on this CPU (torchao's int8 CPU path is not)
                qw = torch.quantize_per_channel(w.contiguous(), scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
            # without VNNI the 8-bit x 8-bit products can saturate a 16-bit sum: use 7-bit activations there
            self.reduce_range = not cpu_vnni()
        elif self.fp16:  # fbgemm's fp16 GEMM: fp16 weights widened to fp32 in the kernel, fp32 activations
            self.packed = torch.ops.quantized.linear_prepack_fp16(w.contiguous(), b)
        elif self.bf16:
            # oneDNN's blocked layout for this batch size: F.linear on a plain bf16 weight reorders it at every
            # call (measured: all of a step's products 22 ms plain, 14.5 ms packed, 21-49 ms in fp32)
            if self.small < ALL_ROWS:
                self.w = torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16).contiguous(), rows)
            if self.small:
                self.kw = torch.ops.tunelab.pack_bf16(w)
        else:
            self.w = w.t().contiguous().t()

    @property
    def int8(self) -> bool:
        return self.fmt == "int8"

    @property
    def fp16(self) -> bool:
        return self.fmt == "fp16"

    @property
    def bf16(self) -> bool:
        return self.fmt == "bf16"

    @property
    def fbgemm(self) -> bool:
        """The weights are fbgemm's packed parameters (int8, fp16), not a tensor."""
        return self.fmt in ("int8", "fp16")

    def __call__(self, x: Any) -> Any:
        from tunelab.serve.lean_script import _linear

        if self.fbgemm:
            return _linear(x, 0, [], [], [self.packed], [], [], 0, self.fmt, self.reduce_range, 0, [], [], [], [])
        kw = [] if self.kw is None else [self.kw]
        w = [] if self.w is None else [self.w]
        return _linear(x, 0, w, [self.b], [], kw, [self.out_features], self.small, self.fmt, False, 0, [], [], [], [])


class LoRA:
    """One adapter's weights, per (layer, module): (A^T [in, r], scale * B^T [r, out]); and per fused module of
    the lean decoder (`fuse`), its modules' A^T side by side and their B^T block-diagonal (None: untouched)."""

    def __init__(self, name: str, weights: dict[tuple[int, str], tuple[Any, Any]]) -> None:
        self.name = name
        self.weights = weights
        self.la: list[Any] = []
        self.lb: list[Any] = []

    def fuse(self, n_layers: int, groups: list[tuple[tuple[str, ...], tuple[int, ...]]]) -> None:
        """groups: per fused module, its modules and their output widths, in the decoder's order."""
        import torch

        self.la, self.lb = [], []
        for layer in range(n_layers):
            for mods, widths in groups:
                present = [(self.weights[(layer, m)], sum(widths[:k])) for k, m in enumerate(mods)
                           if (layer, m) in self.weights]  # fmt: skip
                if not present:
                    self.la.append(None)
                    self.lb.append(None)
                    continue
                a = torch.cat([ab[0] for ab, _ in present], dim=1)
                b = torch.zeros((a.shape[1], sum(widths)))
                r0 = 0
                for (ai, bi), off in present:
                    b[r0 : r0 + ai.shape[1], off : off + bi.shape[1]] = bi
                    r0 += ai.shape[1]
                self.la.append(a)
                self.lb.append(b)


def adapter_supported(path: Path) -> str | None:
    """None when the lean decoder can run this PEFT adapter; otherwise why not."""
    try:
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        return f"adapter_config.json: {e}"
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"peft_type {cfg.get('peft_type')}"
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform"):
        if cfg.get(key):
            return f"{key} is set"
    if cfg.get("bias", "none") != "none":
        return "trained biases"
    return None


_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
                       r"\.lora_([AB])(?:\.[^.]+)?\.weight$")  # fmt: skip


def load_lora(path: Path, name: str, n_layers: int) -> LoRA:
    """Read a PEFT LoRA adapter (safetensors) into the lean decoder's form; ValueError when it targets modules
    the lean decoder does not have a slot for."""
    import math

    from safetensors.torch import load_file

    path = Path(path)
    why = adapter_supported(path)
    if why:
        raise ValueError(f"adapter {name!r}: {why}")
    cfg = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    parts: dict[tuple[int, str], dict[str, Any]] = {}
    for key, t in tensors.items():
        m = _LORA_KEY.search(key)
        if not m:
            raise ValueError(f"adapter {name!r}: tensor {key} is not on a module the lean decoder knows")
        layer, mod, ab = int(m.group(1)), m.group(2), m.group(3)
        if layer >= n_layers:
            raise ValueError(f"adapter {name!r}: tensor {key} names layer {layer} of a {n_layers}-layer model")
        parts.setdefault((layer, mod), {})[ab] = t.float()
    r = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    weights = {}
    for k, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {name!r}: layer {k[0]} {k[1]} lacks lora_A or lora_B")
        weights[k] = (ab["A"].t().contiguous(), (ab["B"] * scale).t().contiguous())
    return LoRA(name, weights)


BLOCK = 16  # tokens per prefix-cache block
PREFIX_CACHE_BYTES = 256 << 20  # 5,800 tokens of SmolLM2-135M, 1,000 of a Llama-3-8B


class _Block:
    __slots__ = ("k", "tokens", "v")

    def __init__(self, tokens: tuple[int, ...], k: list[Any], v: list[Any]) -> None:
        self.tokens, self.k, self.v = tokens, k, v


class PrefixCache:
    """Keys and values of prompt prefixes, in blocks of BLOCK tokens, least recently used evicted.

    A block is keyed by its adapter and a hash chained over every block before it, so it stands for the whole
    prefix up to its end (as vLLM's automatic prefix caching does); its own tokens are compared on a hit. Only
    the first `max_blocks_per_prompt` blocks of a prompt are stored, and never its last token (a prompt must
    leave at least one token to compute, whose logits are the answer's first)."""

    def __init__(self, capacity: int = 256, max_blocks_per_prompt: int = 32) -> None:
        from collections import OrderedDict

        self.blocks: OrderedDict[tuple[str | None, int], _Block] = OrderedDict()
        self.capacity = capacity
        self.max_blocks = max_blocks_per_prompt
        self.hits = 0  # blocks reused, for tests and /metrics

    def _keys(self, prompt: list[int], adapter: str | None) -> list[tuple[tuple[str | None, int], tuple[int, ...]]]:
        out, h = [], 0
        for b in range(min((len(prompt) - 1) // BLOCK, self.max_blocks)):
            toks = tuple(prompt[b * BLOCK : (b + 1) * BLOCK])
            h = hash((h, toks))
            out.append(((adapter, h), toks))
        return out

    def lookup(self, prompt: list[int], adapter: str | None) -> tuple[list[_Block]] | None:
        """The cached blocks that begin `prompt` (in order), or None."""
        found = []
        for key, toks in self._keys(prompt, adapter):
            blk = self.blocks.get(key)
            if blk is None or blk.tokens != toks:
                break
            self.blocks.move_to_end(key)
            found.append(blk)
        self.hits += len(found)
        return (found,) if found else None

    def store(self, prompt: list[int], adapter: str | None, hit: tuple[list[_Block]] | None,
              kv: Any) -> None:  # fmt: skip
        """Store `prompt`'s blocks beyond those it was served from; kv(lo, hi) gives ([k], [v]) for its tokens
        lo..hi (one tensor [kv heads, hi - lo, head dim] per layer)."""
        keys = self._keys(prompt, adapter)
        for b in range(len(hit[0]) if hit else 0, len(keys)):
            key, toks = keys[b]
            if key not in self.blocks:
                k, v = kv(b * BLOCK, (b + 1) * BLOCK)
                self.blocks[key] = _Block(toks, k, v)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)

    def drop(self, adapter: str) -> None:
        for key in [k for k in self.blocks if k[0] == adapter]:
            del self.blocks[key]


class LeanModel:
    """The decode-time forward of a Llama-family model, with its own KV cache for up to `max_rows` rows."""

    decoder = "lean"

    def __init__(self, model: Any, *, max_rows: int = 8, quantize: str | None = None) -> None:
        import torch

        why = self.supports(model)
        if why:
            raise ValueError(why)
        if quantize == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ValueError("quantize='bf16' needs oneDNN's bf16 kernels (a CPU with AVX-512): use fp16 or none")
        if quantize in ("int8", "fp16") and not fbgemm():
            raise ValueError(f"quantize={quantize!r} needs PyTorch's fbgemm kernels (x86): use none")
        conf = model.config
        inner = model.model
        self.weights = quantize or "fp32"  # fp32 | fp16 | bf16 | int8
        # bf16: products of up to `small` rows through tunelab's own kernel where it builds here (`tunelab.kernels`:
        # all of them on AMX), the rest through oneDNN
        self.kernel_note: str | None = None
        small = 0
        if quantize == "bf16":
            from tunelab import kernels

            self.kernel_note = kernels.why_not()
            small = kernels.bf16_rows()
        self.n_layers = len(inner.layers)
        self.n_heads = int(conf.num_attention_heads)
        self.n_kv = int(getattr(conf, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(conf, "head_dim", None) or conf.hidden_size // self.n_heads)
        self.hidden = int(conf.hidden_size)
        self.vocab = int(conf.vocab_size)
        self.embed = inner.embed_tokens.weight.detach()
        self.rotary = inner.rotary_emb
        self.norm_w = inner.norm.weight.detach()
        self.norm_eps = float(inner.norm.variance_epsilon)
        self.layers: list[dict[str, Any]] = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp

            def cat_bias(*mods: Any) -> Any:
                bs = [x.bias for x in mods]
                if all(b is None for b in bs):
                    return None
                return torch.cat(
                    [b if b is not None else torch.zeros(x.out_features) for b, x in zip(bs, mods, strict=True)]
                )

            qkv = (a.q_proj, a.k_proj, a.v_proj)
            self.layers.append(
                {
                    "ln1": layer.input_layernorm.weight.detach(),
                    "eps1": float(layer.input_layernorm.variance_epsilon),
                    "ln2": layer.post_attention_layernorm.weight.detach(),
                    "eps2": float(layer.post_attention_layernorm.variance_epsilon),
                    "qkv": Linear(torch.cat([p.weight for p in qkv]), cat_bias(*qkv), quantize, max_rows, small),
                    "o": Linear(a.o_proj.weight, a.o_proj.bias, quantize, max_rows, small),
                    "gu": Linear(
                        torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                        cat_bias(m.gate_proj, m.up_proj),
                        quantize,
                        max_rows,
                        small,
                    ),
                    "down": Linear(m.down_proj.weight, m.down_proj.bias, quantize, max_rows, small),
                    "inter": int(m.gate_proj.out_features),
                }
            )
        self.head = Linear(model.lm_head.weight, getattr(model.lm_head, "bias", None), quantize, max_rows, small)
        self.scale = self.head_dim**-0.5
        self.scripted = True  # the layer loop runs as TorchScript (`lean_script`); False: as Python
        mods = [L[m] for L in self.layers for m in ("qkv", "o", "gu", "down")]  # the order `layers` indexes
        packed = self.head.fbgemm  # fbgemm's packed parameters, not tensors
        self._script_args: dict[str, Any] = {
            "ln1": [L["ln1"] for L in self.layers],
            "ln2": [L["ln2"] for L in self.layers],
            "eps1": [L["eps1"] for L in self.layers],
            "eps2": [L["eps2"] for L in self.layers],
            "inter": [L["inter"] for L in self.layers],
            "w": [m.w for m in mods] if not packed and mods[0].w is not None else [],
            "b": [] if packed else [m.b for m in mods],
            "p": [m.packed for m in mods] if packed else [],
            "kw": [m.kw for m in mods] if small else [],
            "kn": [m.out_features for m in mods],
            "small": small,
            "fmt": self.weights,
            "reduce_range": self.head.reduce_range,
            "hq": self.n_heads,
            "hk": self.n_kv,
            "d": self.head_dim,
            "scale": float(self.scale),
        }
        self.adapters: dict[str, LoRA] = {}
        block_bytes = 2 * self.n_layers * self.n_kv * self.head_dim * 4 * BLOCK  # fp32 keys and values
        self.prefixes = PrefixCache(capacity=max(1, PREFIX_CACHE_BYTES // block_bytes))
        self.max_rows = max_rows
        self.rows = 0  # rows in use: 0 .. rows-1
        self.t = 0  # columns in use (all rows are aligned to end at column t)
        self.cap = 0
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.valid = torch.zeros((max_rows, 0), dtype=torch.bool)
        self.pos = torch.zeros(max_rows, dtype=torch.long)

    @property
    def kernel(self) -> str:
        """What does this model's matrix products: mkl (fp32), fbgemm (int8, fp16), onednn (bf16), tunelab
        (bf16, tunelab's kernel on AMX for all) or tunelab+onednn (bf16, the kernel for decoding steps)."""
        if self.weights == "bf16":
            from tunelab.kernels import bf16_products

            return bf16_products(self.head.small)
        return {"fp32": "mkl", "fp16": "fbgemm", "int8": "fbgemm"}[self.weights]

    @staticmethod
    def supports(model: Any) -> str | None:
        """None when `model` can run here, otherwise why not (the engine then uses the transformers forward)."""
        conf = getattr(model, "config", None)
        mt = getattr(conf, "model_type", None)
        if mt not in SUPPORTED_TYPES:
            return f"model type {mt!r} (lean decoding knows {', '.join(SUPPORTED_TYPES)})"
        act = getattr(conf, "hidden_act", "silu")
        if act != "silu":
            return f"activation {act!r}"
        if getattr(conf, "use_sliding_window", False) or (mt == "mistral" and getattr(conf, "sliding_window", None)):
            return "sliding-window attention"
        if getattr(conf, "pretraining_tp", 1) not in (1, None):
            return "pretraining_tp > 1"
        if hasattr(model, "get_base_model"):
            return "a PeftModel: give the base model and load adapters with load_adapter"
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
            return "no decoder layer list or rotary module where a Llama-family model has them"
        if next(model.parameters()).device.type != "cpu":
            return "lean decoding runs on the CPU; on a GPU use the transformers forward or --backend vllm"
        return None

    # --- adapters -----------------------------------------------------------------------------------------

    def load_adapter(self, path: Path, name: str) -> None:
        lora = load_lora(path, name, self.n_layers)
        q, kv, inter = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.layers[0]["inter"]
        fused = [(("q_proj", "k_proj", "v_proj"), (q, kv, kv)), (("o_proj",), (self.hidden,)),
                 (("gate_proj", "up_proj"), (inter, inter)), (("down_proj",), (self.hidden,))]  # fmt: skip
        lora.fuse(self.n_layers, fused)
        self.adapters[name] = lora
        self.prefixes.drop(name)  # keys and values computed with an earlier adapter of this name

    def delete_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.prefixes.drop(name)

    # --- cache --------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.rows, self.t = 0, 0
        self.valid[:] = False

    def _ensure(self, cols: int) -> None:
        """Make room for `cols` columns (grown in steps of 256, contents kept)."""
        import torch

        if cols <= self.cap:
            return
        cap = max(cols + 255, self.cap * 2) // 256 * 256
        shape = (self.max_rows, self.n_kv, cap, self.head_dim)
        k = [torch.zeros(shape) for _ in range(self.n_layers)]
        v = [torch.zeros(shape) for _ in range(self.n_layers)]
        for i in range(len(self.k)):
            k[i][:, :, : self.cap] = self.k[i]
            v[i][:, :, : self.cap] = self.v[i]
        valid = torch.zeros((self.max_rows, cap), dtype=torch.bool)
        valid[:, : self.cap] = self.valid
        self.k, self.v, self.valid, self.cap = k, v, valid, cap

    def _shift_right(self, d: int) -> None:
        """Move the rows in use d columns to the right (to make room on the left for a longer prompt)."""
        if d <= 0 or self.rows == 0:
            self.t += max(d, 0)
            return
        self._ensure(self.t + d)
        r, t = self.rows, self.t
        for buf in (*self.k, *self.v):
            buf[:r, :, d : d + t] = buf[:r, :, :t].clone()
            buf[:r, :, :d] = 0
        self.valid[:r, d : d + t] = self.valid[:r, :t].clone()
        self.valid[:r, :d] = False
        self.t += d

    def keep(self, idx: list[int]) -> None:
        """Keep only these rows (in this order) and drop the columns that are padding in all of them."""
        import torch

        if not idx:
            self.reset()
            return
        n, t = len(idx), self.t
        if idx != list(range(n)):
            ix = torch.tensor(idx)
            for buf in (*self.k, *self.v):
                buf[:n, :, :t] = buf[ix, :, :t]
            self.valid[:n, :t] = self.valid[ix, :t]
            self.pos[:n] = self.pos[ix]
        self.valid[n:] = False
        self.rows = n
        used = self.valid[:n, :t].any(0)
        cut = int(used.float().argmax()) if bool(used.any()) else t
        if cut >= 32:  # worth one copy
            for buf in (*self.k, *self.v):
                buf[:n, :, : t - cut] = buf[:n, :, cut:t].clone()
            self.valid[:n, : t - cut] = self.valid[:n, cut:t].clone()
            self.valid[:n, t - cut :] = False
            self.t = t - cut

    # --- forward ------------------------------------------------------------------------------------------

    def add(self, prompts: list[list[int]], adapters: list[str | None]) -> Any:
        """Prefill new rows (appended after the rows in use); returns their next-token logits [n, vocab].

        A prompt that begins with blocks already in the prefix cache (same tokens, same adapter: a shared system
        prompt, say) gets their keys and values copied in and only the rest computed. Row i's cached prefix
        ends at column `start`, its computed part ends at `t`, padding between is masked: positions come from
        `pos`, not from columns, so the hole changes nothing."""
        import torch

        n = len(prompts)
        if self.rows + n > self.max_rows:
            raise ValueError(f"{self.rows + n} rows > {self.max_rows}")
        hits = [self.prefixes.lookup(p, a) for p, a in zip(prompts, adapters, strict=True)]
        cached = [len(h[0]) * BLOCK if h else 0 for h in hits]
        rest = [p[c:] for p, c in zip(prompts, cached, strict=True)]
        w = max(len(r) for r in rest)
        need = w + max(cached)
        if need > self.t:
            self._shift_right(need - self.t)
        self._ensure(self.t + 1)
        r0, r1, start = self.rows, self.rows + n, self.t - w
        ids = torch.zeros((n, w), dtype=torch.long)
        real = torch.zeros((n, w), dtype=torch.bool)
        for i, p in enumerate(rest):
            ids[i, w - len(p) :] = torch.tensor(p, dtype=torch.long)
            real[i, w - len(p) :] = True
        self.valid[r0:r1, :] = False
        self.valid[r0:r1, start : self.t] = real
        for i, h in enumerate(hits):
            if h:
                c = cached[i]
                self.valid[r0 + i, start - c : start] = True
                for layer in range(self.n_layers):
                    self.k[layer][r0 + i, :, start - c : start] = torch.cat([b.k[layer] for b in h[0]], 1)
                    self.v[layer][r0 + i, :, start - c : start] = torch.cat([b.v[layer] for b in h[0]], 1)
        pos = (real.long().cumsum(-1) - 1).clamp(min=0) + torch.tensor(cached)[:, None]
        keys = self.valid[r0:r1, : self.t]  # [n, t]
        causal = torch.ones((w, self.t), dtype=torch.bool).tril(start)  # query i sees keys <= start + i
        mask = keys[:, None, :] & causal[None]
        mask |= (torch.arange(self.t)[None] == torch.arange(w)[:, None] + start)[None]  # padding queries see
        # themselves, so no row of the attention is empty (an empty row gives NaN)
        logits = self._forward(ids, pos, mask[:, None], r0, start, adapters)
        self.pos[r0:r1] = real.sum(-1) + torch.tensor(cached)
        for i, (p, a) in enumerate(zip(prompts, adapters, strict=True)):
            cols = list(range(start - cached[i], start)) + list(range(self.t - len(rest[i]), self.t))
            self.prefixes.store(p, a, hits[i], lambda lo, hi, i=i, cols=cols: (
                [k[r0 + i, :, cols[lo:hi]].clone() for k in self.k], [v[r0 + i, :, cols[lo:hi]].clone() for v in self.v]
            ))  # fmt: skip
        self.rows = r1
        return logits

    def step(self, tokens: list[int], adapters: list[str | None]) -> Any:
        """One decoding step for every row in use (tokens in row order); returns logits [rows, vocab]."""
        import torch

        r, t = self.rows, self.t
        self._ensure(t + 1)
        self.valid[:r, t] = True
        ids = torch.tensor(tokens, dtype=torch.long).view(r, 1)
        pos = self.pos[:r].view(r, 1).clone()
        mask = self.valid[:r, None, None, : t + 1]
        logits = self._forward(ids, pos, mask, 0, t, adapters)
        self.t = t + 1
        self.pos[:r] += 1
        return logits

    def _forward(self, ids: Any, pos: Any, mask: Any, r0: int, start: int, adapters: list[str | None]) -> Any:
        import torch
        import torch.nn.functional as F

        from tunelab.serve.lean_script import layers, rms, scripted_layers

        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, pos)
        half = self.head_dim // 2
        # rotate_half(t) * sin == roll(t, half) * sin with the first half of sin negated: one op fewer
        cos, sin = cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), -1)[:, :, None]
        # an additive float mask: SDPA would otherwise convert the boolean one in every layer
        mask = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
        groups = self._groups(adapters)
        rows = [r if r is not None else torch.zeros(0, dtype=torch.long) for _, r in groups]
        fn = scripted_layers() if self.scripted else layers
        la = [a for g, _ in groups for a in g.la]
        lb = [b for g, _ in groups for b in g.lb]
        every = [r is None for _, r in groups]
        x = fn(x, cos, sin, mask, self.k, self.v, r0, start, rows, every, la, lb, **self._script_args)
        x = rms(x[:, -1], self.norm_w, self.norm_eps)
        return self.head(x)

    def _groups(self, adapters: list[str | None]) -> list[tuple[LoRA, Any]]:
        """(adapter, row index or None for all rows) for every adapter used in this call."""
        import torch

        names = {a for a in adapters if a is not None}
        out = []
        for name in sorted(names):
            lora = self.adapters.get(name)
            if lora is None:
                raise KeyError(f"adapter {name!r} is not loaded")
            rows = [i for i, a in enumerate(adapters) if a == name]
            out.append((lora, None if len(rows) == len(adapters) else torch.tensor(rows)))
        return out
