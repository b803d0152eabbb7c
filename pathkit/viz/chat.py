"""An ipywidgets chat with a trained model: pick or upload an image, ask a question, watch the answer stream.

:func:`stream_answer` yields the growing answer text token by token (transformers' ``TextIteratorStreamer``
fed by :meth:`VisionLanguageModel.generate` in a worker thread); models without ``generate`` fall back to one
``answer`` call. :class:`ChatWidget` is the notebook front end; its ``send()`` is what the Send button calls,
so tests drive it without a browser.
"""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pathkit.models.conversation import IMAGE_TOKEN, clean_answer, tokenize_prompt

# Lazy imports: torch, transformers (the model stack, seconds to import); ipywidgets (ipywidgets, only inside
# a notebook). They load inside the functions that need them, not when this module is imported.


def stream_answer(model: Any, question: str, image: Any = None, max_new_tokens: int = 64) -> Iterator[str]:
    """Yield the answer so far after each new token (greedy); the last item is the full answer."""
    if not (hasattr(model, "generate") and hasattr(model, "tokenizer") and hasattr(model, "template")):
        yield model.answer([question], images=[image] if image is not None else None,
                           max_new_tokens=max_new_tokens)[0]
        return
    import torch
    from transformers import TextIteratorStreamer

    if image is not None and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n{question}"
    ids = torch.tensor([tokenize_prompt(question, model.tokenizer, model.template)])
    mask = torch.ones_like(ids)
    images = model.prepare_images([image]) if image is not None else None
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=False, skip_special_tokens=True, timeout=120)
    was_training = model.training
    model.eval()
    error: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(ids, mask, images=images, max_new_tokens=max_new_tokens, streamer=streamer)
        except BaseException as err:  # surfaced in the caller's thread
            error.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield clean_answer(text, model.template)
    thread.join()
    model.train(was_training)
    if error:
        raise error[0]


def _load_image(value: Any):
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        with Image.open(value) as im:
            return im.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(value))) as im:
            return im.convert("RGB")
    return value.convert("RGB") if hasattr(value, "convert") else value


def _png_bytes(image: Any, size: int = 256) -> bytes:
    img = image.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ChatWidget:
    """Image + question -> streamed answer, with the conversation shown as HTML.

    Args:
        model: a :class:`VisionLanguageModel` (or anything with ``answer``).
        images: example images to choose from (paths or PIL images), shown in a dropdown.
        max_new_tokens: tokens generated per answer.
    """

    def __init__(self, model: Any, images: Sequence[Any] | dict[str, Any] = (), max_new_tokens: int = 48):
        import ipywidgets as w

        self.model = model
        self.max_new_tokens = max_new_tokens
        if not isinstance(images, dict):
            images = {Path(str(p)).name if isinstance(p, (str, Path)) else f"image {i}": p
                      for i, p in enumerate(images)}
        self.examples = dict(images)
        self.history: list[dict[str, str]] = []
        self.picker = w.Dropdown(options=["(none)", *self.examples], description="Image")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload")
        self.preview = w.Image(format="png", width=192)
        self.question = w.Text(placeholder="Ask about the image...", description="Question",
                               layout=w.Layout(width="70%"))
        self.send_button = w.Button(description="Send", button_style="primary")
        self.clear_button = w.Button(description="Clear")
        self.transcript = w.HTML(value="")
        self.status = w.Label(value="")
        self.send_button.on_click(lambda _b: self.send())
        self.clear_button.on_click(lambda _b: self.clear())
        self.picker.observe(lambda _c: self._refresh_preview(), names="value")
        self.upload.observe(lambda _c: self._refresh_preview(), names="value")
        if self.examples:
            self.picker.value = next(iter(self.examples))
        self.widget = w.VBox([w.HBox([self.picker, self.upload]), self.preview,
                              w.HBox([self.question, self.send_button, self.clear_button]), self.status,
                              self.transcript])

    def current_image(self):
        """The uploaded image if any, else the chosen example, else None."""
        if self.upload.value:
            item = self.upload.value[0] if isinstance(self.upload.value, (list, tuple)) else \
                next(iter(self.upload.value.values()))
            return _load_image(item["content"])
        if self.picker.value and self.picker.value != "(none)":
            return _load_image(self.examples[self.picker.value])
        return None

    def _refresh_preview(self) -> None:
        img = self.current_image()
        self.preview.value = _png_bytes(img) if img is not None else b""

    def _render(self, pending: str | None = None) -> None:
        rows = []
        for turn in self.history:
            rows.append(f"<p><b>You:</b> {html.escape(turn['question'])}<br><b>Model:</b> "
                        f"{html.escape(turn['answer'])}</p>")
        if pending is not None:
            rows.append(f"<p><b>Model:</b> {html.escape(pending)}&#9646;</p>")
        self.transcript.value = "".join(rows)

    def send(self) -> str:
        """Answer the current question about the current image, updating the transcript per token."""
        question = self.question.value.strip()
        if not question:
            self.status.value = "type a question first"
            return ""
        image = self.current_image()
        self.send_button.disabled = True
        self.status.value = "thinking..."
        answer = ""
        try:
            for answer in stream_answer(self.model, question, image, self.max_new_tokens):
                self._render(pending=answer)
        except Exception as err:  # shown in the widget, not raised into the notebook's event loop
            self.status.value = f"error: {err}"
            return ""
        finally:
            self.send_button.disabled = False
        self.history.append({"question": question, "answer": answer})
        self.question.value = ""
        self.status.value = f"{len(self.history)} turn(s)"
        self._render()
        return answer

    def clear(self) -> None:
        self.history.clear()
        self.status.value = ""
        self._render()


def chat_widget(model: Any, images: Sequence[Any] | dict[str, Any] = (), max_new_tokens: int = 48):
    """Build the chat and return its :class:`ChatWidget` (display ``.widget`` in a notebook)."""
    return ChatWidget(model, images=images, max_new_tokens=max_new_tokens)
