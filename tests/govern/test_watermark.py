"""The serving watermark: replies to a key it covers carry the mark (found by `tunelab watermark detect` with
the server's key), replies to another key do not; the detector is calibrated on unmarked token streams."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import Service
from tunelab.govern.watermark import Watermark, load_key

TUNELAB = [sys.executable, "-m", "tunelab"]


def test_unmarked_streams_score_as_chance_and_a_biased_one_does_not() -> None:
    wm = Watermark(b"k" * 32, gamma=0.25)
    rng = random.Random(0)
    zs = [wm.score([rng.randrange(1000) for _ in range(200)], 1000)["z"] for _ in range(200)]
    mean = sum(zs) / len(zs)
    assert abs(mean) < 0.3 and sum(z > 2.326 for z in zs) <= 6  # about 1% over the one-sided 1% threshold
    ids = [rng.randrange(1000)]
    for _ in range(100):  # always a green token: the strongest possible mark
        ids.append(int(wm.green(ids[-1], 1000).nonzero()[rng.randrange(250)]))
    s = wm.score(ids, 1000)
    assert s["green_fraction"] == 1.0 and s["p_value"] < 1e-20
    assert Watermark(b"x" * 32).score(ids, 1000)["z"] < 4  # another key does not see it


def test_repeated_pairs_are_scored_once() -> None:
    wm = Watermark(b"k" * 32)
    assert wm.score([5, 6] * 50, 1000)["tokens"] == 2


def test_the_key_file_is_made_once_private_and_refused_when_bad(tmp_path: Path) -> None:
    from tunelab.errors import ConfigError

    key = load_key(tmp_path / "wm.key")
    assert load_key(tmp_path / "wm.key") == key and len(key) == 32
    assert (tmp_path / "wm.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad.key").write_text("not hex")
    with pytest.raises(ConfigError, match="hex"):
        load_key(tmp_path / "bad.key")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = Service(tmp_path_factory.mktemp("wm"), tiny_model_dir)
    (svc.home / "wm.key").write_text("5a" * 32 + "\n")  # a fixed key: the same green lists on every run
    with open(svc.home / "serve.yaml", "a") as f:
        f.write(f"watermark:\n  enabled: true\n  key_file: {svc.home / 'wm.key'}\n  keys: [marked]\n  delta: 4.0\n")
    svc.key("marked")
    svc.key("plain")
    svc.start()
    yield svc
    svc.stop()


def _replies(svc: Service, who: str, tmp_path: Path) -> tuple[Path, list[Any]]:
    from tunelab.models.loading import load_tokenizer

    # The untrained test model samples lone bytes of multi-byte characters a third of the time: they decode to
    # U+FFFD, which no detector can tokenize back, so the text keeps under half of the marked tokens. A real
    # model writes whole characters; here the request's logit_bias bans the tokens that do not decode alone.
    tok = load_tokenizer(svc.model)
    ban = {str(t): -100 for t in range(len(tok)) if "\ufffd" in tok.decode([t])}
    assert 100 <= len(ban) <= 140  # the 128 bytes above 0x7f (a few merged), nothing else
    c = svc.client(who)
    out = []
    for i in range(3):
        r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": f"Tell me {i}"}],
                                      max_tokens=32, temperature=0.7, seed=i, logit_bias=ban)  # fmt: skip
        out.append(r)
    path = tmp_path / f"{who}.jsonl"
    path.write_text("".join(json.dumps(r.model_dump()) + "\n" for r in out))
    return path, out


def _detect(svc: Service, path: Path) -> list[dict[str, Any]]:
    res = subprocess.run([*TUNELAB, "watermark", "detect", str(path), "--model", str(svc.model), "--key-file",
                          str(svc.home / "wm.key"), "--json"], capture_output=True, text=True)  # fmt: skip
    # (the detector re-tokenizes the text, which does not always give back the same tokens: the server here
    # marks strongly; the default model's figures are in bench watermark)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def test_replies_to_a_covered_key_are_marked_and_others_are_not(server: Service, tmp_path: Path) -> None:
    marked, resp = _replies(server, "marked", tmp_path)
    assert all("+kgw-v1-" in (r.system_fingerprint or "") for r in resp)
    rows = _detect(server, marked)
    assert len(rows) == 3 and all(r["marked"] and r["p_value"] < 0.01 for r in rows), rows
    plain, resp = _replies(server, "plain", tmp_path)
    assert not any("kgw" in (r.system_fingerprint or "") for r in resp)
    rows = _detect(server, plain)
    assert all(r["z"] < 3.5 for r in rows), rows  # chance level (p > 2e-4: no flake on another CPU's sampling)
