"""The chat widget driven through its callbacks (no browser), streaming, and Quilt-VQA-RED visual prompts."""

from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

from pathkit.eval.visual_prompt import draw_visual_prompt, red_prompt_questions


@pytest.fixture(scope="module")
def model(session_dir):
    from test_eval_answers import tiny_model_dir

    from pathkit.models.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(tiny_model_dir(session_dir))


@pytest.fixture()
def tissue_image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


def test_stream_answer_grows_to_the_greedy_answer(model, tissue_image):
    from pathkit.viz.chat import stream_answer

    parts = list(stream_answer(model, "What tissue is this?", tissue_image, max_new_tokens=8))
    full = model.answer(["What tissue is this?"], images=[tissue_image], max_new_tokens=8)[0]
    assert len(parts) >= 2 and parts[-1] == full
    assert all(len(a) <= len(b) for a, b in zip(parts, parts[1:]))  # the text only grows


def test_chat_widget_callbacks(model, tissue_image, tmp_path):
    from pathkit.viz.chat import chat_widget

    path = tmp_path / "tile.png"
    tissue_image.save(path)
    chat = chat_widget(model, images=[path], max_new_tokens=6)
    assert chat.picker.value == "tile.png" and len(chat.preview.value) > 0  # preview of the chosen image
    chat.question.value = ""
    chat.send_button.click()
    assert chat.history == [] and "question" in chat.status.value
    chat.question.value = "Is there tumour?"
    chat.send_button.click()  # what a user's click runs
    expected = model.answer(["Is there tumour?"], images=[tissue_image], max_new_tokens=6)[0]
    assert chat.history == [{"question": "Is there tumour?", "answer": expected}]
    assert "Is there tumour?" in chat.transcript.value and chat.question.value == ""
    assert not chat.send_button.disabled
    # an uploaded image replaces the example
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), (250, 250, 250)).save(buf, format="PNG")
    chat.upload.value = ({"name": "up.png", "type": "image/png", "size": len(buf.getvalue()),
                          "content": memoryview(buf.getvalue()),
                          "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)},)
    assert chat.current_image().size == (30, 30)
    chat.question.value = "And this?"
    chat.send()
    assert len(chat.history) == 2
    chat.clear_button.click()
    assert chat.history == [] and chat.transcript.value == ""


def test_red_circle_and_box_drawn_where_the_box_is():
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    out = np.asarray(draw_visual_prompt(img, [[20, 20, 60, 50]], shape="box", pad=0.0, width=2))
    red = (out[..., 0] == 255) & (out[..., 1] == 0) & (out[..., 2] == 0)
    ys, xs = np.nonzero(red)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (20, 20, 60, 50)
    assert not red[35, 40]  # inside stays untouched
    assert np.asarray(img).min() == 255  # the input is not modified
    circ = np.asarray(draw_visual_prompt(img, [[0.2, 0.25, 0.6, 0.625]], shape="circle", pad=0.0))
    red = (circ[..., 0] == 255) & (circ[..., 1] == 0)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - 20) <= 1 and abs(xs.max() - 60) <= 1 and abs(ys.min() - 20) <= 1
    assert not red[20, 20]  # an ellipse leaves the box corner empty
    with pytest.raises(ValueError, match="4 numbers"):
        draw_visual_prompt(img, [[1, 2, 3]])


def test_red_prompt_questions(tmp_path):
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "a.png")
    qs = [{"question_id": "1", "image": "a.png", "text": "What is circled?", "boxes": [[10, 10, 30, 30]]},
          {"question_id": "2", "image": "a.png", "text": "No boxes"}]
    out = red_prompt_questions(qs, tmp_path / "red", base=tmp_path)
    assert out[0]["image"] != "a.png" and out[1]["image"] == "a.png"
    assert np.asarray(Image.open(out[0]["image"]))[..., 1].min() == 0  # red pixels present
