"""Causal language models: by name or path, or built from a config and trained from scratch;
a pretrained one optionally wrapped with LoRA adapters (``train.lora``, through PEFT)."""

from __future__ import annotations

from pathlib import Path

from hpcgen.errors import ConfigError


def build_model(cfg, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, ds_config: dict | None = None):
    """A model with fresh weights (``cfg.model`` None) or the pretrained ``cfg.model``.

    Under ZeRO-3 (``ds_config`` with stage 3) a pretrained model is created partitioned, through
    transformers' DeepSpeed integration (``HfDeepSpeedConfig``: ``zero.Init``; rank 0 reads the
    checkpoint, in bf16 when training in bf16, and each module's weights are scattered to the
    ranks' shards as they load). Otherwise every rank would first materialise the whole model (7B
    in fp32 is 27 GB per rank, 216 GB per 8-GPU node) before DeepSpeed partitions it. A fresh
    model is built whole, as with every other preset, so that a seed gives the same initial
    weights under any ZeRO stage (``deepspeed.zero.Init`` initialises in another order);
    ``partitioned_init: true`` builds it inside ``zero.Init`` instead, for from-scratch models too
    large for one rank.

    With ``cfg.lora`` the pretrained model is wrapped by PEFT's ``get_peft_model``: the base
    weights are frozen and only the adapters (and the biases ``lora.bias`` names) keep
    ``requires_grad``, which is what the optimizer and the snapshots go by."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every resume
    zero3 = ds_config is not None and (ds_config.get("zero_optimization") or {}).get("stage") == 3
    bf16 = ds_config is not None and bool((ds_config.get("bf16") or {}).get("enabled"))
    partitioned = zero3 and bool(cfg.model or getattr(cfg, "partitioned_init", False))
    hf_ds = None
    if partitioned:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference: keep it alive here
    try:
        if cfg.model:
            try:
                model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.bfloat16 if bf16 else
                                                             torch.float32)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load model {cfg.model!r} ({str(exc).splitlines()[0]})",
                                  key="train.model",
                                  fix="give a local model directory, or run where the hub is reachable") from None
        else:
            config = fresh_config(cfg, vocab_size, pad_id, bos_id, eos_id)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        del hf_ds
    if getattr(cfg, "gradient_checkpointing", False):
        # activation checkpointing: recompute activations in the backward pass, trading about a
        # third more compute for memory (long sequences, large micro batches)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if getattr(cfg, "lora", None) is not None:
        model = wrap_lora(model, cfg)
    return model


def base_model_path(name: str) -> str:
    """What an adapter snapshot records as its base: an absolute path for a local directory (the
    evaluation job may start elsewhere than the training job), a hub name as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def lora_config(cfg):
    """PEFT's LoraConfig for ``cfg.lora`` (a causal LM; ``target_modules`` None: PEFT's default for
    the architecture, q_proj and v_proj for Llama)."""
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules) if lora.target_modules else None, bias=lora.bias,
                      base_model_name_or_path=base_model_path(cfg.model))


def wrap_lora(model, cfg):
    """The model with LoRA adapters; its base weights frozen.

    With gradient checkpointing the frozen embeddings' output needs no gradient, and a block
    recomputed in the backward pass whose input needs none (reentrant checkpointing, which some
    models' layers still use) gives its adapters no gradient either: the embeddings' output is
    made to require one (``enable_input_require_grads``). PEFT adds that hook itself when the
    model already checkpoints as it is wrapped; the check below makes it hold whatever the order."""
    import torch
    from peft import get_peft_model

    if not cfg.model:  # refused at plan already (Train.check); a config made in code gets the same line
        raise ConfigError("LoRA adapts a pretrained model and train.model is not set", key="train.lora",
                          fix="set train.model to a local model directory")
    # the same initial adapters on every rank and under every ZeRO stage (loading the base, whole
    # or partitioned, draws other random numbers before this point)
    torch.manual_seed(cfg.seed)
    try:
        peft_model = get_peft_model(model, lora_config(cfg))
    except ValueError as exc:  # a target module the model does not have, say
        raise ConfigError(f"LoRA does not fit model {cfg.model!r} ({str(exc).splitlines()[0]})", key="train.lora",
                          fix="name modules the model has in train.lora.target_modules, or leave it unset") from None
    base = peft_model.get_base_model()
    if getattr(cfg, "gradient_checkpointing", False) and not getattr(base, "_require_grads_hooks", None):
        base.enable_input_require_grads()
    return peft_model


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters, counted as PEFT's ``print_trainable_parameters`` counts them:
    under ZeRO-3 a partitioned parameter holds no elements locally, its full size is ``ds_numel``."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() or getattr(p, "ds_numel", 0)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def fresh_config(cfg, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config, LlamaConfig

    if cfg.architecture == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                           num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                           intermediate_size=cfg.intermediate or 4 * cfg.hidden,
                           max_position_embeddings=cfg.max_length, pad_token_id=pad_id, bos_token_id=bos_id,
                           eos_token_id=eos_id, tie_word_embeddings=False)
    if cfg.architecture == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads,
                          n_positions=cfg.max_length, bos_token_id=bos_id, eos_token_id=eos_id,
                          pad_token_id=pad_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    raise ConfigError(f"unknown architecture {cfg.architecture!r}", key="train.architecture", fix="use llama or gpt2")


def parameter_count(cfg, vocab_size: int) -> int:
    """Parameters of a from-scratch model (for plan's disk estimate), without building it."""
    h, layers, inter = cfg.hidden, cfg.layers, cfg.intermediate or 4 * cfg.hidden
    if cfg.architecture == "gpt2":
        return layers * (12 * h * h + 13 * h) + vocab_size * h + cfg.max_length * h + 2 * h
    return layers * (4 * h * h + 3 * h * inter + 2 * h) + 2 * vocab_size * h + h


#: (in, out) of the linear layers LoRA usually targets, per architecture family, from config.json;
#: h: hidden size, i: MLP width, q: query width (heads x head_dim), kv: key/value width
_LLAMA_SHAPES = {"q_proj": ("h", "q"), "k_proj": ("h", "kv"), "v_proj": ("h", "kv"), "o_proj": ("q", "h"),
                 "gate_proj": ("h", "i"), "up_proj": ("h", "i"), "down_proj": ("i", "h")}
_GPT2_SHAPES = {"c_attn": [("h", "3h")], "c_proj": [("h", "h"), ("i", "h")], "c_fc": [("h", "i")]}


def lora_parameter_count(config: dict, lora) -> int:
    """Adapter parameters of a LoRA run, from the base model's config.json: r x (in + out) for
    each targeted linear layer in each block (A is r x in, B is out x r).

    Shapes are known for Llama-style blocks (q/k/v/o and gate/up/down projections: Llama,
    Mistral, Qwen2, ...) and GPT-2's (c_attn, c_proj in attention and MLP, c_fc); a module name
    not known here counts as one hidden x hidden layer per block, an embedding or lm_head as
    vocab + hidden once. Trainable biases (``bias`` other than "none") are left out: a few
    thousand numbers. ``target_modules`` None is PEFT's default for the model type."""
    h = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    head_dim = int(config.get("head_dim") or h // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    inter = int(config.get("intermediate_size") or config.get("n_inner") or 4 * h)
    vocab = int(config.get("vocab_size") or 0)
    width = {"h": h, "i": inter, "q": heads * head_dim, "kv": kv_heads * head_dim, "3h": 3 * h}
    targets = list(lora.target_modules or default_lora_targets(config.get("model_type", "")))
    gpt2 = config.get("model_type") == "gpt2"
    total = 0
    for target in targets:
        leaf = target.split(".")[-1]
        if leaf in ("embed_tokens", "wte", "lm_head"):
            total += lora.r * (vocab + h)
            continue
        shapes = _GPT2_SHAPES.get(leaf) if gpt2 else ([_LLAMA_SHAPES[leaf]] if leaf in _LLAMA_SHAPES else None)
        for a, b in shapes or [("h", "h")]:
            total += layers * lora.r * (width[a] + width[b])
    return total


#: PEFT's default LoRA targets for the model types hpcgen trains, so that plan need not import
#: PEFT (and torch with it) for its estimate; other types are looked up in PEFT's own table
_DEFAULT_TARGETS = {"llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def default_lora_targets(model_type: str) -> list[str]:
    """PEFT's default LoRA target modules for a model type (q_proj, v_proj for Llama)."""
    if model_type in _DEFAULT_TARGETS:
        return list(_DEFAULT_TARGETS[model_type])
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
    except ImportError:
        defaults = {}
    return list(defaults.get(model_type) or ["q_proj", "v_proj"])
