"""POST /v1/images/generations on the real server, driven by the official `openai` client."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.serve.test_server import TUNELAB, Server, start_server, stop_server
from tunelab.fsutil import atomic_dir
from tunelab.images.train import save_adapter
from tunelab.images.unet import add_lora, load_base
from tunelab.serve.images import class_in

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def image_server(tiny_model_dir: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("imgserve")
    unet, _, meta = load_base(tiny_base)
    with atomic_dir(tmp / "adapter") as out:  # an adapter that adds the class "seven" in a free slot
        save_adapter(add_lora(unet, 2, 2, 0.0, ["to_q", "conv1"]), meta.with_classes(["seven"]), out)
    env = {**os.environ, "TUNELAB_HOME": str(tmp / "home")}
    made = subprocess.run([*TUNELAB, "keys", "create", "--name", "main", "--json"], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    (tmp / "serve.yaml").write_text(
        f"images:\n  base: {tiny_base}\n  adapters:\n    sevens: adapter\n  sample_steps: 3\n  max_n: 4\n"
    )
    proc, url = start_server(["--model", str(tiny_model_dir), "--config", str(tmp / "serve.yaml")], env)
    srv = Server(url, env, {"main": json.loads(made.stdout)["key"]}, proc)
    yield srv
    stop_server(srv)


def _png(b64: str | None) -> Image.Image:
    assert b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_the_openai_client_generates_images_with_the_adapter_chosen_by_model(image_server: Server) -> None:
    c = image_server.client()
    assert {"base", "sevens"} <= {m.id for m in c.models.list().data}
    r = c.images.generate(model="sevens", prompt="a handwritten seven", n=2, response_format="b64_json",
                          extra_body={"seed": 11})  # fmt: skip
    assert len(r.data) == 2 and r.data[0].revised_prompt == "seven"
    img = _png(r.data[0].b64_json)
    assert img.size == (8, 8) and img.mode == "L"
    again = c.images.generate(model="sevens", prompt="seven", n=2, extra_body={"seed": 11})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in r.data]  # a seed makes it repeatable
    base = c.images.generate(model="base", prompt="0", n=1, extra_body={"seed": 11})
    assert _png(base.data[0].b64_json).size == (8, 8)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"model": "sevens", "prompt": "a cat"}, "names none"),
        ({"model": "sevens", "prompt": "0 or 1"}, "names several"),
        ({"model": "base", "prompt": "seven"}, "names none"),  # the base never learnt it
        ({"model": "nope", "prompt": "0"}, "does not exist"),
        ({"model": "base", "prompt": "0", "n": 5}, "limit of 4"),
        ({"model": "base", "prompt": "0", "size": "1024x1024"}, "8x8"),
        ({"model": "base", "prompt": "0", "response_format": "url"}, "b64_json"),
    ],
)
def test_bad_image_requests_get_an_openai_error_naming_the_problem(
    image_server: Server, kwargs: dict[str, object], says: str
) -> None:
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        image_server.client().images.generate(**kwargs)  # type: ignore[arg-type]
    assert says in str(e.value)


def test_an_image_request_needs_a_key(image_server: Server) -> None:
    r = httpx.post(image_server.url + "/v1/images/generations", json={"model": "base", "prompt": "0"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_class_in_reads_whole_words_only() -> None:
    assert class_in("7", ["7", "17"]) == "7"
    assert class_in("a seven please", ["seven", "even"]) == "seven"
    assert class_in("draw 17", ["7", "17"]) == "17"
    assert class_in("nothing", ["7"]) == []

