"""Evaluation snapshots, the two kinds the train stage writes, and one way to load either.

- full fine-tuning and from-scratch runs: the whole model (``config.json`` +
  ``model.safetensors``), transformers' own format;
- a LoRA run (``train.lora``): the adapter alone, in PEFT's format (``adapter_config.json``,
  whose ``base_model_name_or_path`` names the base model, + ``adapter_model.safetensors``). A
  7B base is 13.5 GB in bf16; its rank-8 q/v adapter is 8 MB, and a run writes dozens of
  snapshots.

Both hold the tokenizer and ``snapshot.json`` (step, items seen, loss), written last.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpcgen.errors import ConfigError

#: PEFT's file names (peft.utils.CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME), here without importing
#: peft, which a full snapshot does not need
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_peft_model(model) -> bool:
    """Whether ``model`` is a PEFT model; without importing PEFT in a run that never did (no PEFT
    model can exist before peft is imported)."""
    import sys

    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_adapter(path) -> bool:
    """Whether the snapshot at ``path`` is a LoRA adapter (else a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


class AdapterFiles:
    """Writes a PEFT model's adapter as ``PeftModel.save_pretrained`` does (the same two files,
    keys and safetensors metadata), from weights gathered beforehand.

    Made on the training thread, used by the background SnapshotWriter: it holds a copy of the
    adapter config taken at the snapshot's step, so the writer never touches the live model
    (``PeftModel.save_pretrained`` flips ``inference_mode`` in the model's own config while it
    writes, and would do so while the next steps train)."""

    def __init__(self, peft_model, adapter_name: str = "default") -> None:
        import copy

        self.model = peft_model
        self.adapter_name = adapter_name
        self.config = copy.deepcopy(peft_model.peft_config[adapter_name])
        self.config.inference_mode = True  # as PEFT saves it: loaded for inference unless asked otherwise

    def state_dict(self, weights: dict) -> dict:
        """PEFT's adapter keys (``...q_proj.lora_A.weight``: the adapter's name left out) for the
        gathered trainable parameters. ``save_embedding_layers=False``: the base embeddings are
        frozen and never resized here, and PEFT's "auto" would look the base model up on the hub
        from a compute node to find that out."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, state_dict=weights, adapter_name=self.adapter_name,
                                         save_embedding_layers=False)

    def save_pretrained(self, folder, state_dict: dict, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        self.config.save_pretrained(str(folder))


def load_snapshot(path, dtype=None, device="cpu"):
    """The snapshot at ``path`` as a plain transformers causal LM in eval mode, on ``device``.

    A full snapshot loads as it is. An adapter snapshot loads its base model (the path its
    ``adapter_config.json`` records), applies the adapter with ``PeftModel.from_pretrained`` and
    merges it into the weights (``merge_and_unload``: W + alpha/r x B A), so that evaluation runs
    at the speed of the plain model and gets the same class either way. The merge happens in
    ``dtype`` on ``device`` (a bf16 merge rounds the sum once, as training in bf16 does)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    dtype = dtype or torch.float32
    if not is_adapter(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    from peft import PeftModel

    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except ValueError as exc:
        raise ConfigError(f"snapshot {path}: {ADAPTER_CONFIG} is not valid JSON ({exc})", key="train.lora",
                          fix="train the snapshot again") from None
    if not base:
        raise ConfigError(f"snapshot {path}: {ADAPTER_CONFIG} names no base model", key="train.lora",
                          fix="set base_model_name_or_path in it to the base model directory")
    looks_local = base.startswith(("/", ".", "~")) or Path(base).expanduser().exists()
    if looks_local and not (Path(base).expanduser() / "config.json").is_file():
        raise ConfigError(f"snapshot {path}: its base model {base} does not exist or holds no model",
                          key="train.model", fix="put the base model back there (the adapter applies to it only)")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"snapshot {path}: cannot load its base model {base} ({str(exc).splitlines()[0]})",
                          key="train.model", fix="give the evaluation a local copy of the base model") from None
    peft_model = PeftModel.from_pretrained(model.to(device), str(path), torch_device=str(device))
    return peft_model.merge_and_unload().eval()
