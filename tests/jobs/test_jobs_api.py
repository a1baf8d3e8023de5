"""The fine-tuning jobs service driven by the official `openai` SDK against a real server and worker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import FAST, Service, chat_rows, httpx, openai, write_jsonl


def _upload(c: Any, path: Path) -> Any:
    with open(path, "rb") as f:
        return c.files.create(file=f, purpose="fine-tune")


@pytest.fixture(scope="module")
def finished(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job run to the end: upload -> create -> succeeded."""
    d = tmp_path_factory.mktemp("data")
    c = service.client()
    train = _upload(c, write_jsonl(d / "train.jsonl", chat_rows(30)))
    valid = _upload(c, write_jsonl(d / "valid.jsonl", chat_rows(10, offset=100)))
    job = c.fine_tuning.jobs.create(
        model="tiny-llama", training_file=train.id, validation_file=valid.id, suffix="topics", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        extra_body={"tunelab": FAST},
    )  # fmt: skip
    done = service.wait(job.id, ("succeeded", "failed", "cancelled"))
    return {"train": train, "valid": valid, "job": job, "done": done}


def test_upload_returns_a_file_object_with_tunelab_audit(service: Service, finished: dict[str, Any]) -> None:
    f = finished["train"]
    assert f.object == "file" and f.purpose == "fine-tune" and f.id.startswith("file-")
    assert f.filename == "train.jsonl" and f.status == "processed"
    assert f.tunelab["records"] == 30 and f.tunelab["kind"] == "chat"
    assert f.tunelab["audit"]["records_valid"] == 30
    c = service.client()
    assert c.files.retrieve(f.id).bytes == f.bytes
    content = c.files.content(f.id).read()
    assert content.decode().count("\n") == 30
    assert f.id in [x.id for x in c.files.list()]


def test_job_runs_to_success_with_a_paired_comparison(finished: dict[str, Any]) -> None:
    j, done = finished["job"], finished["done"]
    assert j.object == "fine_tuning.job" and j.status == "queued" and j.seed == 7
    assert j.hyperparameters.n_epochs == 1 and j.hyperparameters.batch_size == 4
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:tiny-llama:main:topics:")
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at and done.error is None
    cmp = done.tunelab["comparison"]
    assert cmp["kind"] == "classification" and cmp["metric"] == "accuracy" and cmp["n"] == 10
    assert 0.0 <= cmp["p_value"] <= 1.0 and cmp["verdict"].startswith("The tuned model is")
    assert isinstance(cmp["better"], bool)


def test_events_page_newest_first_with_metrics_and_audit(service: Service, finished: dict[str, Any]) -> None:
    c = service.client()
    jid = finished["job"].id
    events = list(c.fine_tuning.jobs.list_events(jid, limit=5))  # the SDK follows `after` across pages
    assert len(events) >= 10 and all(e.object == "fine_tuning.job.event" for e in events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert len({e.id for e in events}) == len(events)
    msgs = [e.message for e in events]
    assert msgs[0].startswith("The job has successfully completed")
    assert msgs[-1].startswith("Created fine-tuning job")
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert sorted(steps) == [1, 2, 3, 4]
    assert any(m.startswith("Data audit:") for m in msgs)
    assert any(m.startswith("The tuned model is") for m in msgs)
    page = c.fine_tuning.jobs.list_events(jid, limit=2)
    assert len(page.data) == 2 and page.has_more


def test_checkpoints_are_servable_and_the_result_file_is_openai_csv(service: Service, finished: dict[str, Any]) -> None:
    c = service.client()
    done = finished["done"]
    ckpts = list(c.fine_tuning.jobs.checkpoints.list(done.id))
    assert [k.step_number for k in ckpts] == [2]
    k = ckpts[0]
    assert k.object == "fine_tuning.job.checkpoint" and k.fine_tuning_job_id == done.id
    assert k.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-2"
    assert k.metrics.step == 2 and k.metrics.train_loss > 0
    [rid] = done.result_files
    csv = c.files.content(rid).read().decode().splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [row.split(",")[0] for row in csv[1:]] == ["1", "2", "3", "4"]
    assert csv[-1].split(",")[3] != ""  # validation loss at the end
    for model in (done.fine_tuned_model, k.fine_tuned_model_checkpoint):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "The market"}],
                                      max_tokens=3, temperature=0)  # fmt: skip
        assert r.model == model and r.usage.completion_tokens >= 1


def test_another_key_sees_nothing_of_it_and_admin_sees_all(service: Service, finished: dict[str, Any]) -> None:
    done, f = finished["done"], finished["train"]
    other, admin, main = service.client("other"), service.client("admin"), service.client()
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.list_events(done.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "x"}])
    assert done.id not in [j.id for j in other.fine_tuning.jobs.list()]
    assert f.id not in [x.id for x in other.files.list()]
    assert done.fine_tuned_model not in [m.id for m in other.models.list()]
    assert done.fine_tuned_model in [m.id for m in main.models.list()]
    assert admin.fine_tuning.jobs.retrieve(done.id).id == done.id
    assert done.fine_tuned_model in [m.id for m in admin.models.list()]


def test_a_bad_line_is_rejected_naming_line_and_field_and_nothing_is_kept(service: Service, tmp_path: Path) -> None:
    rows: list[Any] = chat_rows(4)
    rows[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    c = service.client()
    before = sorted(p.name for p in (service.home / "jobs" / "files").iterdir())
    with pytest.raises(openai.BadRequestError) as e:
        _upload(c, bad)
    err = e.value.body
    assert "line 3" in err["message"] and "role" in err["message"] and err["param"].startswith("messages")
    assert err["code"] == "invalid_file"
    assert sorted(p.name for p in (service.home / "jobs" / "files").iterdir()) == before
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(openai.BadRequestError, match="empty"):
        _upload(c, tmp_path / "empty.jsonl")
    with pytest.raises(openai.BadRequestError, match="purpose"), open(bad, "rb") as f:
        c.files.create(file=f, purpose="batch")


def test_bad_job_requests_are_openai_errors(service: Service, finished: dict[str, Any]) -> None:
    c = service.client()
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.create(model="gpt-4o", training_file=finished["train"].id)
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        c.fine_tuning.jobs.create(model="tiny-llama", training_file="file-nope")
    with pytest.raises(openai.BadRequestError, match="preference"):
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=finished["train"].id, method={"type": "dpo"})
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=finished["train"].id,
                                  hyperparameters={"n_epochs": 0})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="cancel"):
        c.fine_tuning.jobs.cancel(finished["done"].id)  # it has finished


def test_cancel_stops_the_training_process_within_seconds(service: Service, tmp_path: Path) -> None:
    c = service.client()
    f = _upload(c, write_jsonl(tmp_path / "t.jsonl", chat_rows(25)))
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                    extra_body={"tunelab": {**FAST, "max_steps": 5000}})  # fmt: skip
    service.wait(job.id, ("running",))
    run_dir = Path(c.fine_tuning.jobs.retrieve(job.id).tunelab["run_dir"])
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "train" / "curve.jsonl").is_file():
        time.sleep(0.3)
    pid = int((run_dir / "worker.pid").read_text())
    t0 = time.time()
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    while time.time() - t0 < 15 and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), "the training process outlived the cancel by 15 s"
    assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert any("cancelled" in e.message for e in c.fine_tuning.jobs.list_events(job.id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_metrics_count_jobs_by_status(service: Service, finished: dict[str, Any]) -> None:
    text = httpx.get(service.url + "/metrics").text
    assert 'tunelab_jobs{status="succeeded"}' in text
    assert "tunelab_job_duration_seconds_bucket" in text
    assert "tunelab_time_to_first_token_seconds_bucket" in text
    assert json.loads(httpx.get(service.url + "/health").text)["status"] == "ok"


def test_schemathesis_finds_no_server_error_in_the_jobs_routes(service: Service, finished: dict[str, Any]) -> None:
    """Generated requests for /v1/files and /v1/fine_tuning/*, half of the job requests on a real file."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    key = service.key("fuzz", "--max-queued-jobs", "2")
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {key}"}
    c = service.client("fuzz")
    real = c.files.create(file=("t.jsonl", json.dumps(chat_rows(1)[0]).encode() + b"\n"), purpose="fine-tune").id
    seen: list[int] = []
    ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.path.startswith(("/v1/files", "/v1/fine_tuning")):
            continue
        ops += 1

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            if isinstance(case.body, dict) and "training_file" in case.body and len(seen) % 2 == 0:
                case.body["training_file"] = real
            if isinstance(case.path_parameters, dict) and len(seen) % 3 == 0:
                for k in case.path_parameters:
                    case.path_parameters[k] = real if "file" in k else finished["done"].id
            r = case.call(base_url=service.url, headers=auth, timeout=60)
            seen.append(r.status_code)
            assert r.status_code < 500, (case.method, case.path, case.body, r.text[:300])

        check()
    for j in c.fine_tuning.jobs.list(limit=100):  # what the fuzzer managed to queue: cancelled, not trained
        if j.status in ("queued", "running", "paused", "validating_files"):
            c.fine_tuning.jobs.cancel(j.id)
    assert ops >= 11 and len(seen) >= 100 and any(s < 300 for s in seen), (ops, sorted(set(seen)))


def test_a_licence_the_policy_refuses_fails_the_job_at_the_audit(service: Service, tmp_path: Path) -> None:
    c = service.client()
    f = _upload(c, write_jsonl(tmp_path / "nc.jsonl", chat_rows(12)))
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                    extra_body={"tunelab": {**FAST, "licence": "CC-BY-NC-4.0"}})  # fmt: skip
    done = service.wait(job.id, ("succeeded", "failed"))
    assert done.status == "failed" and done.error.code == "audit_failed"
    assert "CC-BY-NC-4.0" in done.error.message and done.fine_tuned_model is None
    assert any(e.level == "error" for e in c.fine_tuning.jobs.list_events(job.id, limit=100))


def test_a_dpo_job_on_openai_preference_rows(service: Service, tmp_path: Path) -> None:
    topics = ["business", "sport", "politics", "entertainment", "tech"]
    rows = [
        {"input": {"messages": [{"role": "user", "content": f"Topic? {chat_rows(1, i)[0]['messages'][0]['content']}"}]},
         "preferred_output": [{"role": "assistant", "content": topics[i % 5]}],
         "non_preferred_output": [{"role": "assistant", "content": topics[(i + 1) % 5]}]}
        for i in range(24)
    ]  # fmt: skip
    c = service.client()
    f = _upload(c, write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert f.tunelab["kind"] == "preference" and f.tunelab["records"] == 24
    job = c.fine_tuning.jobs.create(
        model="tiny-llama", training_file=f.id, seed=2,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4}}},
        extra_body={"tunelab": FAST},
    )  # fmt: skip
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    done = service.wait(job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.tunelab["comparison"]["n"] == 2  # 24 rows: 2 held out (grouped by prompt), scored on the chosen answer
    bad = [dict(rows[0]), *rows[1:3]]
    bad[0]["preferred_output"] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match=r"line 1, field preferred_output\.role"):
        _upload(c, write_jsonl(tmp_path / "bad-prefs.jsonl", bad))


def test_per_key_limits_on_queued_jobs_and_file_size(service: Service, tmp_path: Path) -> None:
    service.key("small", "--max-queued-jobs", "1", "--max-file-bytes", "2048")
    c = service.client("small")
    big = write_jsonl(tmp_path / "big.jsonl", chat_rows(40))
    assert big.stat().st_size > 2048
    with pytest.raises(openai.APIStatusError) as e:
        _upload(c, big)
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    f = _upload(c, write_jsonl(tmp_path / "small.jsonl", chat_rows(5)))
    first = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                      extra_body={"tunelab": {**FAST, "max_steps": 5000}})  # fmt: skip
    with pytest.raises(openai.RateLimitError, match="already has 1 jobs"):
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, extra_body={"tunelab": FAST})
    c.fine_tuning.jobs.cancel(first.id)
    second = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, extra_body={"tunelab": FAST})
    assert second.status == "queued"
    c.fine_tuning.jobs.cancel(second.id)


def test_jobs_and_files_page_with_after_and_limit(service: Service, finished: dict[str, Any]) -> None:
    c = service.client()
    everything = [j.id for j in c.fine_tuning.jobs.list(limit=100)]
    assert len(everything) >= 3 and len(set(everything)) == len(everything)
    first = c.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == everything[:1] and first.has_more
    assert [j.id for j in c.fine_tuning.jobs.list(limit=1)] == everything  # the SDK follows `after`
    assert [j.id for j in c.fine_tuning.jobs.list(after=everything[0], limit=2).data] == everything[1:3]
    created = [j.created_at for j in c.fine_tuning.jobs.list(limit=100)]
    assert created == sorted(created, reverse=True)
    files = [f.id for f in c.files.list()]
    assert [f.id for f in c.files.list(limit=1)] == files
    assert [f.id for f in c.files.list(order="asc")] == files[::-1]
    with pytest.raises(openai.BadRequestError, match="limit"):
        c.fine_tuning.jobs.list(limit=0)
