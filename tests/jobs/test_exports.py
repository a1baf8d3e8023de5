"""A succeeded job's model exported through the jobs API (the official SDK's generic calls), parity-checked by
the worker's child process, and downloaded as one file or a zip whose bytes match the recorded hashes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import FAST, Service, chat_rows, httpx, openai, write_jsonl
from tunelab.jobs import export_task
from tunelab.jobs.export_store import ExportRow


@pytest.fixture(scope="module")
def job(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("data")
    c = service.client()
    with open(write_jsonl(d / "train.jsonl", chat_rows(30)), "rb") as f:
        train = c.files.create(file=f, purpose="fine-tune")
    with open(write_jsonl(d / "valid.jsonl", chat_rows(8, offset=100)), "rb") as f:
        valid = c.files.create(file=f, purpose="fine-tune")
    j = c.fine_tuning.jobs.create(model="tiny-llama", training_file=train.id, validation_file=valid.id, seed=3,
                                  extra_body={"tunelab": FAST})  # fmt: skip
    done = service.wait(j.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    return done


def _wait(c: Any, path: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        e: dict[str, Any] = c.get(path, cast_to=object)
        if e["status"] not in ("queued", "running"):
            return e
        time.sleep(0.5)
    raise AssertionError(f"{path} still {e['status']}")


def test_a_merged_export_is_checked_then_downloaded_with_its_hashes(service: Service, job: Any) -> None:
    c = service.client()
    base = f"/fine_tuning/jobs/{job.id}/exports"
    e = c.post(base, body={"format": "merged"}, cast_to=object)
    assert e["object"] == "fine_tuning.job.export" and e["status"] == "queued" and e["download_url"] is None
    done = _wait(c, f"{base}/{e['id']}")
    assert done["status"] == "succeeded", done["error"]
    merged = done["parity"]["merged"]
    assert done["parity_passed"] and merged["passed"] and merged["top1_agreement"] >= 0.99
    assert merged["prompt_tokens_equal"] == 1.0 and done["items"] == 8  # the job's validation file
    names = {f["name"]: f for f in done["files"]}
    assert {"merged/model.safetensors", "merged/config.json", "parity.json", "export.json"} <= set(names)

    auth = {"Authorization": f"Bearer {service.keys['main']}"}
    url = service.url + done["download_url"]
    one = httpx.get(url, params={"file": "merged/model.safetensors"}, headers=auth, timeout=60)
    assert one.status_code == 200
    assert hashlib.sha256(one.content).hexdigest() == names["merged/model.safetensors"]["sha256"]
    whole = httpx.get(url, headers=auth, timeout=60)
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(whole.content))
    assert zf.testzip() is None  # every member's CRC holds
    got = {n.split("/", 1)[1]: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()}
    assert got == {n: f["sha256"] for n, f in names.items()}
    assert httpx.get(url, params={"file": "../job.json"}, headers=auth).status_code == 404

    run_dir = Path(job.tunelab["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert any(x["dir"].endswith(e["id"]) and x["parity_passed"] for x in manifest["exports"])
    assert any(r["path"] == "eval/verdict.json" for r in manifest["outputs"])  # the job's eval joined the chain
    verify = [sys.executable, "-m", "tunelab", "govern", "verify", str(run_dir)]
    res = subprocess.run(verify, capture_output=True, text=True)
    assert res.returncode == 0 and "exports" in res.stdout and "checkpoints" in res.stdout, res.stderr
    msgs = [ev.message for ev in c.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith(f"Export {e['id']} is ready") for m in msgs)
    listed = c.get(base, cast_to=object)
    assert listed["data"][0]["id"] == e["id"]

    with pytest.raises(openai.NotFoundError):  # another key sees neither the job nor its export
        service.client("other").get(f"{base}/{e['id']}", cast_to=object)
    assert httpx.get(url, headers={"Authorization": f"Bearer {service.keys['other']}"}).status_code == 404
    assert c.delete(f"{base}/{e['id']}", cast_to=object)["deleted"] is True
    assert not (run_dir / "exports" / e["id"]).exists()
    assert subprocess.run(verify, capture_output=True).returncode == 0  # its manifest entry went with it
    with pytest.raises(openai.NotFoundError):
        c.get(f"{base}/{e['id']}", cast_to=object)


def test_bad_export_requests_are_openai_errors(service: Service, job: Any, tmp_path: Path) -> None:
    c = service.client()
    base = f"/fine_tuning/jobs/{job.id}/exports"
    with pytest.raises(openai.BadRequestError, match="q3"):
        c.post(base, body={"format": "gguf", "quantize": ["q3"]}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="lora"):
        c.post(base, body={"format": "merged", "lora": True}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        c.post("/fine_tuning/jobs/ftjob-nope/exports", body={}, cast_to=object)
    with open(write_jsonl(tmp_path / "t.jsonl", chat_rows(12)), "rb") as f:
        train = c.files.create(file=f, purpose="fine-tune")
    queued = c.fine_tuning.jobs.create(model="tiny-llama", training_file=train.id, extra_body={"tunelab": FAST})
    with pytest.raises(openai.BadRequestError, match="succeeded"):
        c.post(f"/fine_tuning/jobs/{queued.id}/exports", body={}, cast_to=object)
    c.fine_tuning.jobs.cancel(queued.id)


def _export_dir(tmp_path: Path, passed: bool) -> ExportRow:
    out = tmp_path / "exports" / "ftexport-x"
    out.mkdir(parents=True)
    (out / "model-q4_k_m.gguf").write_bytes(b"GGUF")
    gate = {"passed": passed, "failures": [] if passed else ["accuracy -6.0 points < -5"]}
    parity = {"passed": passed, "items": 4, "results": {"q4_k_m": {"gate": gate, "summary": {
        "top1_agreement": 0.97, "mean_kl": 0.01, "greedy_agreement": 0.9, "prompt_tokens_equal": 1.0}}}}
    (out / "parity.json").write_text(json.dumps(parity))
    (out / "export.json").write_text(json.dumps({"files": {"model-q4_k_m.gguf": hashlib.sha256(b"GGUF").hexdigest()}}))
    return ExportRow("ftexport-x", "ftjob-x", "k", 0, "gguf", ["q4_k_m"], False, "running", str(out))


def test_the_outcome_follows_the_gate_and_names_what_failed(tmp_path: Path) -> None:
    status, values = export_task.outcome(_export_dir(tmp_path / "a", True), 0)
    assert status == "succeeded" and values["result"]["parity"]["q4_k_m"]["top1_agreement"] == 0.97
    assert [f["name"] for f in values["result"]["files"]] == ["model-q4_k_m.gguf", "parity.json", "export.json"]
    status, values = export_task.outcome(_export_dir(tmp_path / "b", False), 1)
    assert status == "failed" and values["error"]["code"] == "parity_failed"
    assert "q4_k_m: accuracy -6.0 points" in values["error"]["message"] and values["result"]["files"]
    e = _export_dir(tmp_path / "c", True)
    (Path(e.out_dir).parent / "ftexport-x.log").write_text("loading\nerror: llama.cpp could not load the file\n")
    (Path(e.out_dir) / "parity.json").unlink()
    status, values = export_task.outcome(e, 2)
    assert status == "failed" and values["error"]["code"] == "export_failed"
    assert "exit code 2: error: llama.cpp could not load" in values["error"]["message"]
