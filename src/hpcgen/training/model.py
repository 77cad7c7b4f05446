"""Causal language models: by name or path, or built from a config and trained from scratch."""

from __future__ import annotations

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
    large for one rank."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every resume
    zero3 = bool(ds_config) and (ds_config.get("zero_optimization") or {}).get("stage") == 3
    bf16 = bool(ds_config) and bool((ds_config.get("bf16") or {}).get("enabled"))
    partitioned = zero3 and bool(cfg.model or getattr(cfg, "partitioned_init", False))
    hf_ds = None
    if partitioned:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference: keep it alive here
    try:
        if cfg.model:
            try:
                model = AutoModelForCausalLM.from_pretrained(cfg.model, torch_dtype=torch.bfloat16 if bf16 else
                                                             torch.float32)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load model {cfg.model!r} ({str(exc).splitlines()[0]})",
                                  key="train.model",
                                  fix="give a local model directory, or run where the hub is reachable") from None
        else:
            config = fresh_config(cfg, vocab_size, pad_id, bos_id, eos_id)
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    finally:
        del hf_ds
    if getattr(cfg, "gradient_checkpointing", False):
        # activation checkpointing: recompute activations in the backward pass, trading about a
        # third more compute for memory (long sequences, large micro batches)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


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
