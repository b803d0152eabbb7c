"""``pathkit serve``: a real server on 127.0.0.1 (the CLI in a subprocess), the official ``openai`` client
against it, answers equal to ``pathkit eval answers`` and transformers' ``generate``, OpenAI-style 400s, and
file access only under ``--image-root``."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathkit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
ATTRS = {"mpp": 0.5, "patch_size": 256, "patch_size_level0": 256, "level": 0, "slide": "s1.tiff", "encoder": "tiny"}
QUESTIONS = ["Is there tumor in this image?", "Describe the tissue.", "What is the grade?", "Any necrosis?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no server at {url} after {timeout} s")


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(8)
    return [Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, Path]:
    """A trained-like tiny VLM (LoRA + connector moved off init), its HF LLaVA export, an image root with the
    question images, a secret file beside the root and a symlink inside it that points at the secret."""
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel

    base = tmp_path_factory.mktemp("serve")
    model = VisionLanguageModel.from_config(Config.from_name("tiny").override({"llm.lora_r": 4}))
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("connector."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.trained_parts |= {"lora", "connector"}
    model.save_pretrained(base / "model")
    result = CliRunner().invoke(app, ["export", str(base / "model"), "--format", "hf-llava", "--out",
                                      str(base / "hf")])
    assert result.exit_code == 0, result.output
    root = base / "root"
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i, image in enumerate(_images()):
        image.save(root / "imgs" / f"{i}.png")
        rows.append({"question_id": f"q{i}", "image": f"imgs/{i}.png", "text": QUESTIONS[i], "answer": "yes",
                     "answer_type": "CLOSED"})
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _images(1)[0].save(base / "secret.png")
    os.symlink(base / "secret.png", root / "link.png")
    return {"base": base, "model": base / "model", "hf": base / "hf", "root": root}


@pytest.fixture(scope="module")
def server(workdir):
    """``pathkit serve`` on the HF LLaVA export (import path), as a user starts it."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATHKIT_TORCH_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pathkit.cli", "serve", str(workdir["hf"]), "--host", "127.0.0.1", "--port",
         str(port), "--image-root", str(workdir["root"]), "--max-batch", "8", "--model-id", "tiny-vlm",
         "--max-image-mb", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key="EMPTY", max_retries=0, timeout=120)


def _ask(client, image_url: str | None, question: str, model: str = "tiny-vlm", **params):
    content = [{"type": "text", "text": question}]
    if image_url is not None:
        content = [{"type": "image_url", "image_url": {"url": image_url}}] + content
    params = {"temperature": 0, "max_tokens": 12, **params}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          **params)


def test_models_and_greedy_answers_equal_pathkit_and_transformers_generate(client, workdir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    assert [m.id for m in client.models.list().data] == ["tiny-vlm"]
    processor = AutoProcessor.from_pretrained(workdir["hf"])
    hf = LlavaForConditionalGeneration.from_pretrained(workdir["hf"]).eval()
    for image, question in zip(_images(), QUESTIONS):
        reply = _ask(client, _data_url(image), question)
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        new = hf.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        want = processor.decode(new, skip_special_tokens=True).split("USER:")[0].strip()
        assert reply.choices[0].message.content == want
        assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_eval_answers_through_the_server_equals_local_eval_answers(server, workdir, tmp_path):
    questions = workdir["root"] / "questions.jsonl"
    runner = CliRunner()
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    for args in ([str(workdir["model"]), str(questions), "--out", str(local)],
                 ["tiny-vlm", str(questions), "--out", str(remote), "--base-url", server + "/v1"]):
        result = runner.invoke(app, ["eval", "answers", *args, "--max-new-tokens", "12", "--batch-size", "4"])
        assert result.exit_code == 0, result.output
    texts = [[json.loads(line)["text"] for line in p.read_text().splitlines()] for p in (local, remote)]
    assert texts[0] == texts[1] and len(texts[0]) == len(QUESTIONS)
    assert json.loads(remote.read_text().splitlines()[0])["model_id"] == "tiny-vlm"


def test_streaming_joins_up_to_the_same_answer(client):
    image = _data_url(_images()[2])
    whole = _ask(client, image, QUESTIONS[2], max_tokens=16).choices[0].message.content
    chunks = list(_ask(client, image, QUESTIONS[2], max_tokens=16, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_concurrent_requests_are_batched_and_answer_as_alone(client, server):
    import httpx

    images = [_data_url(im) for im in _images()] * 4
    questions = QUESTIONS * 4
    alone = {q: _ask(client, u, q).choices[0].message.content for u, q in zip(images[:4], questions[:4])}
    before = httpx.get(server + "/health").json()["batches"]
    results: list[str | None] = [None] * len(images)

    def worker(i: int) -> None:
        results[i] = _ask(client, images[i], questions[i]).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [alone[q] for q in questions]
    batches = httpx.get(server + "/health").json()["batches"] - before
    assert batches < len(images)  # requests shared batches


def _error(exc) -> dict:
    return exc.response.json()["error"]


def test_bad_requests_get_openai_style_400s_and_the_server_keeps_serving(client, server):
    import httpx
    import openai

    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    cases = {
        "image_required": dict(image_url=None),
        "invalid_image_url": dict(image_url="data:image/png;base64,@@@not-base64"),
        "image_too_large": dict(image_url=_data_url(big)),  # ~120 kB over --max-image-mb 0.05
        "context_length_exceeded": dict(image_url=_data_url(_images()[0]), max_tokens=4000),
    }
    for code, case in cases.items():
        url = case.pop("image_url")
        with pytest.raises(openai.BadRequestError) as info:
            _ask(client, url, "Hi?", **case)
        err = _error(info.value)
        assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"], err
    with pytest.raises(openai.BadRequestError) as info:
        _ask(client, "data:text/plain;base64,aGVsbG8=", "Hi?")
    assert "not an image" in _error(info.value)["message"]
    raw = httpx.post(server + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and "error" in raw.json()
    assert _ask(client, _data_url(_images()[0]), QUESTIONS[0]).choices[0].message.content is not None


def test_file_paths_are_served_only_from_under_the_image_root(client, workdir):
    import openai

    root = workdir["root"]
    by_data = _ask(client, _data_url(Image.open(root / "imgs" / "1.png").convert("RGB")), QUESTIONS[1])
    for path in ("imgs/1.png", str(root / "imgs" / "1.png"), "file://" + str(root / "imgs" / "1.png")):
        assert _ask(client, path, QUESTIONS[1]).choices[0].message.content == by_data.choices[0].message.content
    escapes = ["../secret.png", "imgs/../../secret.png", str(workdir["base"] / "secret.png"), "link.png",
               "/etc/passwd", "imgs/missing.png", "http://127.0.0.1:1/x.png"]
    for path in escapes:
        with pytest.raises(openai.BadRequestError) as info:
            _ask(client, path, QUESTIONS[1])
        assert _error(info.value)["code"] in ("path_not_allowed", "invalid_image_url"), path
        assert "secret" not in json.dumps(_error(info.value)).replace(path, "")  # nothing of the file leaks


def _thread_server(app_) -> tuple[str, object, threading.Thread]:
    """A real uvicorn server on 127.0.0.1 in a thread of this process (cheaper than another subprocess)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app_, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    _wait_until_up(url)
    return url, server, thread


def test_slide_model_takes_a_feature_file_under_the_root(tmp_path):
    import openai

    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel
    from pathkit.serve.engine import Engine, ServedModel
    from pathkit.serve.server import ServerSettings, create_app
    from pathkit.wsi.features import write_features

    model = VisionLanguageModel.from_config(Config.from_name("tiny"), vision="slide")
    model.save_pretrained(tmp_path / "slide_model")
    root = (tmp_path / "root").resolve()
    root.mkdir()
    rng = np.random.default_rng(0)
    n = 40
    coords = np.stack(np.meshgrid(np.arange(8) * 256, np.arange(5) * 256), -1).reshape(-1, 2)[:n]
    feats = rng.standard_normal((n, model.cfg.longnet.in_dim)).astype(np.float32)
    write_features(root / "s1.h5", coords, ATTRS, features=feats)
    served = ServedModel(tmp_path / "slide_model")
    engine = Engine(served, max_batch=4)
    url, srv, thread = _thread_server(create_app(engine, ServerSettings(model_id="slide", image_root=root)))
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0)
        reply = _ask(c, "s1.h5", "What is the diagnosis?", model="slide")
        want = model.eval().answer(["What is the diagnosis?"], slide_features=[torch.from_numpy(feats)],
                                   slide_coords=[torch.from_numpy(coords)], max_new_tokens=12)[0]
        assert reply.choices[0].message.content == want
        with pytest.raises(openai.BadRequestError) as info:
            _ask(c, _data_url(_images()[0]), "What is the diagnosis?", model="slide")
        assert _error(info.value)["code"] == "slide_features_required"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        engine.close()


def test_llm_judge_runs_against_a_served_text_model(tmp_path):
    """The judges' ChatClient (official openai client) against ``pathkit serve`` of a plain LLM."""
    from pathkit.eval.judges import make_client, relative_score
    from pathkit.serve.engine import Engine, ServedModel
    from pathkit.serve.server import ServerSettings, create_app

    engine = Engine(ServedModel("tiny"), max_batch=4)
    url, srv, thread = _thread_server(create_app(engine, ServerSettings(model_id="judge")))
    try:
        judge = make_client(url + "/v1", "judge", max_attempts=1)
        items = [{"question_id": f"j{i}", "question": "Is there tumor?", "reference": "Yes.", "answer": "No.",
                  "category": "closed"} for i in range(2)]
        relative_score(items, judge, tmp_path / "judge.jsonl", temperature=0, max_tokens=8)
        usage = judge.usage.summary()
        assert usage["completions"] >= 2 and usage["prompt_tokens"] > 0  # the server answered every request
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        engine.close()


def test_sampling_is_reproducible_with_a_seed(client):
    image = _data_url(_images()[3])
    first, second = (_ask(client, image, QUESTIONS[3], temperature=1.0, top_p=0.9, seed=7, max_tokens=16)
                     .choices[0].message.content for _ in range(2))
    assert first == second
    greedy = _ask(client, image, QUESTIONS[3], max_tokens=16).choices[0].message.content
    others = {_ask(client, image, QUESTIONS[3], temperature=1.0, seed=s, max_tokens=16).choices[0].message.content
              for s in range(3)}
    assert others != {greedy}  # it does sample
