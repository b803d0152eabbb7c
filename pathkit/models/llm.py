"""Causal language models: any transformers causal LM by hub id or local folder, or a tiny random-init Llama.

``load_llm(name_or_path)`` returns ``(model, tokenizer)``. Names:

``tiny``      a random-init ``LlamaForCausalLM`` (hidden 64, 2 layers) with a byte-level BPE tokenizer trained
              offline on a built-in pathology + English corpus; built once with a fixed seed, saved under
              ``pathkit.paths.cache_dir()/llm/tiny`` and loaded back with ``from_pretrained``, the same path real
              weights take.
``tiny-pretrained``  ``tiny`` after a few minutes of text-only language modelling on synthetic pathology
              text (:mod:`pathkit.models.tiny_pretrain`): the tiny stand-in for a pretrained chat LLM, used by
              the LoRA recipes (pa_llava, wsi_llava) at the tiny preset. Built once (about 2-4 minutes on one
              CPU thread), cached like ``tiny``; ``pathkit_build.json`` in its folder records the loss curve.
``tiny-gpu``  the same recipe, bigger (hidden 512, 8 layers), for the gpu preset.
anything else a transformers hub id (e.g. ``lmsys/vicuna-7b-v1.5``) or a local folder; an HF LLaVA folder
              gives its language model (:mod:`pathkit.models.hf_llava`).

Every tokenizer leaves here with a pad token and the ``<image>`` placeholder token; when a real tokenizer lacks
``<image>`` it is added and the embeddings are resized (as the llava-hf checkpoints do), so a checkpoint that was
trained through pathkit always reloads through the same two steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from pathkit.io import PathkitError, folder_lock
from pathkit.models.conversation import IMAGE_TOKEN
from pathkit.models.llava_folder import check_load, is_hf_llava_dir, llava_config, read_llava_weights
from pathkit.models.tiny_pretrain import PretrainSpec, pretrain_tiny_llm
from pathkit.paths import cache_dir

# Lazy imports: tokenizers, transformers, torch (the model stack, seconds to import). They load inside the
# functions that need them, not when this module is imported.

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN,
                  "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|user|>", "<|assistant|>")

TINY_SPECS = {
    # name: LlamaConfig sizes
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024),
    "tiny-gpu": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=4, max_position_embeddings=4096),
}
TINY_SPECS["tiny-pretrained"] = TINY_SPECS["tiny"]  # the same model, then text pre-training (tiny_pretrain)
TINY_VOCAB_SIZE = 4096
TINY_SEED = 1234
TINY_BUILD_VERSION = 4  # bump when the tiny recipe changes: cached folders of another version are rebuilt
# 4: conversations are tokenized as whole strings (LLaVA's boundaries), so tiny-pretrained is rebuilt on them

# The tokenizer's training corpus: the words of pathkit's synthetic captions, questions and reports, the chat
# templates, and everyday English, so common words are single tokens. Byte-level BPE still encodes any text.
_PATHOLOGY_WORDS = """
tumor tumour stroma stromal lymphocytes lymphocyte lymphocytic necrosis necrotic gland glands glandular adipose
fat fatty tissue tissues cell cells nuclei nucleus nuclear density dense sparse grade grades low intermediate high
mitoses mitosis mitotic figures pleomorphism pleomorphic atypia atypical hyperchromatic chromatin nucleoli
eosinophilic basophilic cytoplasm cytoplasmic membrane collagen fibrous fibroblasts desmoplastic inflammatory
inflammation infiltrate infiltrating immune lumen lumens crypts epithelium epithelial mucin mucinous vacuoles
vacuolated debris karyorrhexis apoptotic haematoxylin hematoxylin eosin stain stained staining h&e ihc
immunohistochemistry slide slides whole wsi patch patches tile tiles region regions field view magnification
microscope microscopy micrograph histology histological histopathology pathology pathologist pathological
carcinoma adenocarcinoma sarcoma lymphoma benign malignant invasive invasion metastasis metastatic neoplasm
neoplastic lesion lesions margin margins diagnosis diagnostic differential prognosis report morphology
architecture pattern patterns solid sheets nests cords trabecular cribriform papillary acinar tubular
well moderately poorly differentiated differentiation hyperplasia dysplasia squamous colon colorectal breast lung
liver kidney prostate stomach skin lymph node vessel vessels blood red cells erythrocytes capillaries
round oval spindle elongated irregular regular uniform variable size shape large small scattered clustered
clusters abundant scant moderate mild marked severe focal diffuse present absent visible seen shows showing
contains containing composed consists predominantly mostly mainly area areas percent fraction proportion
yes no true false option options choice answer question image picture photo
adipocytes aligned along amorphous best bundles central choose clear closely coarse collagenous columnar crowded
dark delicate describes dust empty enlarged fibres fibers fibroblast flattened following forming fragments granular
h&e-stained histologic layer lined loose lumina lymphoid mature membranes monotonous name note
nuclear-to-cytoplasmic open option's oriented packed peripheral pink polygonal radially ratio rich ring section
separated septa single spindle-shaped structures surrounded thin viable wavy white word grade score scores tumour
fragmented material pyknotic karyolysis nuclear cytoplasmic stained shaped
0 1 2 3 4 5 6 7 8 9 10 20 50 100 percent % mm um micron microns
"""
_ENGLISH = """
the a an of and or in on at to from with without by for is are was were be been being has have had do does did
this that these those there here which what where when why how who whom whose it its they them their we you i
he she his her our your my me us can could would should may might must will shall not any some all each every
more most less least many much few one two three four five six seven eight nine ten first second third last
next above below left right top bottom center middle upper lower near far between within into over under
describe described description explain identify identified classify classified type kind class category
please tell me about see look observe observed appear appears appearance feature features finding findings
likely unlikely consistent suggest suggests suggestive compatible typical example examples evidence based
than then also only very quite rather about approximately around mostly the image shows a
user assistant system chat curious artificial intelligence gives helpful detailed polite answers questions
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: ASSISTANT: You are a helpful pathology assistant.
"""


def _tiny_corpus() -> list[str]:
    """Sentences the tiny tokenizer is trained on (deterministic)."""
    words = _PATHOLOGY_WORDS.split() + _ENGLISH.split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    # every word also after a space and capitalised, so " word" and "Word" become single tokens
    lines += [f"{w} {w} {w.capitalize()} {w.capitalize()}." for w in dict.fromkeys(words)]
    lines += [
        "Is there tumor in this image? Yes.", "Is there necrosis in this image? No.",
        "What tissue type is shown? A) tumor B) stroma C) lymphocytes D) necrosis E) gland F) adipose",
        "Answer with the option's letter from the given choices directly.",
        "Answer with yes or no.", "The image shows tumor with high nuclear density and many mitoses.",
        "Describe the tissue in this image.", "What is the diagnosis of this whole slide image?",
    ]
    # The corpus is self-contained on purpose: the tiny tokenizer must not change when other modules do.
    return lines * 4  # repetition makes whole words win BPE merges


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = TINY_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer offline and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<unk>", "<s>", "</s>", "<pad>")],
        model_max_length=4096, padding_side="right",
    )
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_llm(out_dir: str | Path, name: str = "tiny", seed: int = TINY_SEED) -> Path:
    """Build a random-init Llama-style causal LM + tokenizer with a fixed seed and save them to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if name not in TINY_SPECS:
        raise PathkitError(f"tiny LLM {name!r}: must be one of {sorted(TINY_SPECS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(out_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, rms_norm_eps=1e-6, **TINY_SPECS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with _quiet_progress():
        model.save_pretrained(str(out_dir))
    return out_dir


def _pretrain_spec(name: str):
    if name != "tiny-pretrained":
        return None

    return PretrainSpec()


def _build_key(name: str) -> dict:
    """What a cached tiny LLM must have been built with to be reused (version, and the pre-training spec)."""
    spec = _pretrain_spec(name)
    return {"version": TINY_BUILD_VERSION, "pretrain": asdict(spec) if spec is not None else None}


def tiny_llm_dir(name: str = "tiny", log=None) -> Path:
    """The cache folder of a tiny LLM, built on first use (atomically: a half-built folder is never visible).

    ``log``: a callable for progress lines while ``tiny-pretrained`` trains (default: print to stderr)."""
    final = cache_dir() / "llm" / name
    key = _build_key(name)
    if _built_key(final) == key:
        return final
    # one build at a time: runs started together (a sweep, parallel tests) wait for the first and reuse its folder
    with folder_lock(final):
        if _built_key(final) == key:
            return final
        return _build_into(final, name, key, log)


def _build_into(final: Path, name: str, key: dict, log) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build_tiny_llm(tmp, name=name)
        record = {"name": name, **key}
        spec = _pretrain_spec(name)
        if spec is not None:
            record["pretraining"] = _pretrain_folder(tmp, spec, log)
        (tmp / "pathkit_build.json").write_text(json.dumps(record, indent=1))
        if final.exists() and _built_key(final) != key:  # stale: move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=final.parent))
            os.replace(final, stale / name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)  # another process may have won the race; its folder is identical
        except OSError:
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pretrain_folder(folder: Path, spec, log=None) -> dict:
    """Load the random-init model saved in ``folder``, pre-train it on text (one thread), save it back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and faster than 2 threads for a 64-wide model
    try:
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            log(f"building tiny-pretrained: {spec.steps} steps of text pre-training (once; cached in {folder.parent})")
            record = pretrain_tiny_llm(model, tokenizer, spec, log=lambda line: None)
        log(f"tiny-pretrained: loss {record['losses'][0]['loss']} -> {record['losses'][-1]['loss']} "
            f"in {record['seconds']} s")
        with _quiet_progress():
            model.save_pretrained(str(folder))
    finally:
        torch.set_num_threads(threads)
    return record


def _built_key(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / "pathkit_build.json").read_text())
        return {"version": int(record["version"]), "pretrain": record.get("pretrain")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _quiet_progress():
    """No per-shard progress bars from transformers while loading small local checkpoints."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _resolve(name_or_path: str | Path) -> str:
    text = str(name_or_path)
    if text in TINY_SPECS:
        return str(tiny_llm_dir(text))
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    if Path(text).expanduser().exists():
        raise PathkitError(f"{text}: an LLM must be a folder (config.json + weights), not a file")
    if text.startswith(("/", "./", "../", "~")):
        raise PathkitError(f"{text}: LLM folder not found")
    return text  # a hub id


def prepare_tokenizer(tokenizer, model=None):
    """Give a tokenizer a pad token and the ``<image>`` token (resizing ``model``'s embeddings if one was added)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]},
                                     replace_extra_special_tokens=False)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer


def load_llm(name_or_path: str | Path = "tiny", dtype=None, device: str = "cpu"):
    """Load a causal LM and its tokenizer: ``tiny``, ``tiny-gpu``, a hub id or a local folder.

    Args:
        name_or_path: see the module docstring.
        dtype: a torch dtype or its name (``"bfloat16"``); ``None`` keeps the checkpoint's.
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token and ``<image>``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve(name_or_path)

    if is_hf_llava_dir(source):  # an HF LLaVA folder: its language model part
        model, tokenizer = load_llava_language_model(source, dtype=dtype)
        prepare_tokenizer(tokenizer, model)
        return model.to(device), tokenizer
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with _quiet_progress():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype) if dtype is not None \
                else AutoModelForCausalLM.from_pretrained(source)
        except OSError as err:
            raise PathkitError(f"LLM {name_or_path!r}: cannot load ({str(err).splitlines()[0]})") from err
    prepare_tokenizer(tokenizer, model)
    return model.to(device), tokenizer


def load_llava_language_model(directory: str | Path, dtype=None):
    """The causal LM of an HF LLaVA folder (its text config + language-model weights) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    config = llava_config(directory)
    text = config.text_config
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(text, dtype=dtype) if dtype is not None \
        else AutoModelForCausalLM.from_config(text)
    body = read_llava_weights(directory, "language_model")
    head = read_llava_weights(directory, "lm_head")
    state = {f"model.{k}": v for k, v in body.items()} | {f"lm_head.{k}": v for k, v in head.items()}
    tied = bool(getattr(text, "tie_word_embeddings", False))
    check_load(model.load_state_dict(state, strict=False), f"{directory}: language model",
                allowed_missing=("lm_head.",) if tied else ())
    if tied:
        model.tie_weights()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as err:
        raise PathkitError(f"{directory}: cannot load the tokenizer ({type(err).__name__})") from err
    return model.eval(), tokenizer
