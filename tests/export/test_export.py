"""`tunelab export`: merged weights equal the PEFT model's; llama.cpp runs the GGUF like tunelab runs the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.export import parity
from tunelab.export.command import ExportRequest, run_export


def _tiny_with_default_tokenizer(path: Path) -> Path:
    """A random 2-layer Llama that uses the default model's tokenizer and chat template (llama.cpp's converter
    knows that tokenizer; it refuses an unknown one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.loading import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(None).path)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-like directory: model/ (a LoRA with random, non-zero weights on the tiny model) and an eval file."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("export")
    base = _tiny_with_default_tokenizer(root / "base")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                      init_lora_weights=False))  # fmt: skip
    run = root / "run"
    model.save_pretrained(run / "model")
    (run / "manifest.json").write_text("{}")
    (run / "data").mkdir()
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Topic of: {t}"},
                                         {"role": "assistant", "content": lab}]}
            for i, (t, lab) in enumerate([("shares rose", "business"), ("the striker scored", "sport"),
                                          ("the minister spoke", "politics"), ("a new phone", "tech")])]  # fmt: skip
    (run / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = ["business", "politics", "sport", "tech"]
    (run / "eval" / "tuned").mkdir(parents=True)  # as a run writes it: the eval's kind and label set
    (run / "eval" / "tuned" / "metrics.json").write_text(
        json.dumps({"kind": "classification", "metrics": {"labels": labels}}))
    return run


def test_merged_weights_give_the_peft_models_logits(run_dir: Path, tmp_path: Path) -> None:
    import torch

    from tunelab.export.merge import tuned_model
    from tunelab.models.loading import load_model

    res = run_export(ExportRequest(run_dir, "merged", out=tmp_path / "out", max_new=8))
    assert res["passed"], res["results"]["merged"]["gate"]
    s = res["results"]["merged"]["summary"]
    assert s["items"] == 4 and s["prompt_tokens_equal"] == 1.0 and s["greedy_agreement"] == 1.0
    peft_model, tok, _ = tuned_model(run_dir / "model")
    plain = load_model(tmp_path / "out" / "merged")
    ids = torch.tensor([tok("The market rallied on Friday and the bank rose.")["input_ids"]])
    with torch.inference_mode():
        a, b = peft_model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert (a - b).abs().max().item() < 1e-4  # fp32 rounding: 1.06e-5 measured on an AVX2 CPU (merged sums differ)
    assert peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum() > 0
    exp = json.loads((tmp_path / "out" / "export.json").read_text())
    assert exp["files"]["merged/model.safetensors"] and exp["parity_passed"]
    card = (tmp_path / "out" / "merged" / "README.md").read_text()
    assert exp["adapter_sha256"] in card and (tmp_path / "out" / "merged" / "chat_template.jinja").is_file()
    assert json.loads((run_dir / "manifest.json").read_text())["exports"][-1]["dir"] == str(tmp_path / "out")
    from tunelab.report.html import exports_table

    page = exports_table(json.loads((run_dir / "manifest.json").read_text())["exports"])  # the report's rows
    assert "<h3>Exports</h3>" in page and str(tmp_path / "out") in page and "passed" in page


def test_gguf_runs_in_llama_cpp_with_the_same_greedy_tokens(run_dir: Path, tmp_path: Path) -> None:
    res = run_export(ExportRequest(run_dir, "gguf", ["f16", "q8_0"], out=tmp_path / "out", max_new=8, lora=True))
    f16 = res["results"]["f16"]
    assert f16["gate"]["passed"], f16["gate"]
    assert f16["summary"]["prompt_tokens_equal"] == 1.0  # llama.cpp rendered the chat from the GGUF's template
    assert all(r["greedy_equal"] for r in f16["rows"]) and f16["summary"]["top1_agreement"] >= 0.99
    assert f16["summary"]["mean_kl"] < 1e-2
    from tunelab.export.gguf import metadata

    meta = metadata(tmp_path / "out" / "model-f16.gguf")
    assert "<|im_start|>" in str(meta["tokenizer.chat_template"]) and meta["general.architecture"] == "llama"
    assert res["results"]["q8_0"]["summary"]["prompt_tokens_equal"] == 1.0  # (q8_0 crashed llama.cpp on AMX before
    lora = res["results"]["lora_f16"]  # export.llamacpp's workaround); the LoRA-only GGUF on the base's GGUF:
    assert lora["gate"]["passed"] and all(r["greedy_equal"] for r in lora["rows"]), lora["gate"]
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf") and "<|im_end|>" in modelfile


def test_a_gguf_without_its_chat_template_fails_the_gate(run_dir: Path, tmp_path: Path) -> None:
    """What peers' users report ("the GGUF answers differently"): the template lost in conversion. Here the
    merged directory's template is replaced before conversion; llama.cpp renders the chat differently and the
    gate says so."""
    from tunelab.export import gguf
    from tunelab.export.merge import merged, tuned_model

    merged(run_dir / "model", tmp_path / "merged")
    cfg = tmp_path / "merged" / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    cfg.write_text(json.dumps(data))
    (tmp_path / "merged" / "chat_template.jinja").unlink(missing_ok=True)
    f = gguf.convert(tmp_path / "merged", tmp_path / "broken.gguf", "f16")
    model, tok, _ = tuned_model(run_dir / "model")
    items = [parity.Item("a", [{"role": "user", "content": "Topic of: shares rose"}], "business")]
    res = parity.compare(parity.HFRuntime(model, tok, "ref"), parity.LlamaCppRuntime(f), items, [], max_new=4)
    g = parity.gate("f16", res["summary"])
    assert res["summary"]["prompt_tokens_equal"] == 0.0 and not g["passed"]
    assert any("prompt" in x for x in g["failures"])


def test_export_cli_names_a_bad_target_and_exits_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "tunelab", "export", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and str(tmp_path) in res.stderr
    res = subprocess.run([sys.executable, "-m", "tunelab", "export", str(tmp_path), "--format", "onnx"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2


def test_the_converter_and_llama_cpp_are_installed_by_the_test_setup() -> None:
    """`make test` runs `make export-deps`; without it the GGUF tests above would not run here."""
    from tunelab.export.gguf import check_tools

    assert (check_tools() / "convert_hf_to_gguf.py").is_file()


def test_the_jobs_workers_command_exports_a_gguf_it_then_offers(run_dir: Path, tmp_path: Path) -> None:
    """What the worker runs for `POST /v1/fine_tuning/jobs/{id}/exports` (a child process: llama.cpp never loads
    in the server), and the status it reads back from the files: a q8_0 GGUF, checked, with its hash."""
    import hashlib

    from tunelab.jobs import export_task
    from tunelab.jobs.export_store import ExportRow

    e = ExportRow("ftexport-t", "ftjob-t", "k", 0, "gguf", ["q8_0"], False, "running", str(tmp_path / "ftexport-t"))
    res = subprocess.run(export_task.command(e, run_dir, 2), capture_output=True, text=True)
    status, values = export_task.outcome(e, res.returncode)
    assert status == "succeeded", (values, res.stderr[-2000:])
    assert values["result"]["items"] == 2 and values["result"]["parity"]["q8_0"]["prompt_tokens_equal"] == 1.0
    f = next(x for x in values["result"]["files"] if x["name"] == "model-q8_0.gguf")
    assert f["sha256"] == hashlib.sha256((tmp_path / "ftexport-t" / "model-q8_0.gguf").read_bytes()).hexdigest()
