"""The top-level config keys each recipe reads: anything else in a config is a mistake.

Plain data (no torch import), used by ``tunesmith run`` and ``tunesmith validate`` through
``tunesmith.recipes._checks``. A key is listed here when the recipe (or a helper it calls)
reads it, or when torchtune 0.6.1 configs for that recipe carry it and tunesmith accepts it on
purpose without using it (``TORCHTUNE_ACCEPTED``). Besides these, a config may hold top-level
keys that other values reference (``${name}``) and anything under the ``extra:`` mapping, the
documented place for deliberate extras. ``tests/recipes/test_config_keys.py`` checks that every
key a recipe's source reads is declared and that every bundled and torchtune config passes.
"""

from __future__ import annotations

__all__ = ["EXTRA_KEY", "KEYS", "SUPPLIED", "TORCHTUNE_ACCEPTED", "recipe_keys"]

EXTRA_KEY = "extra"
"""A top-level mapping no recipe reads: deliberate extras (notes, values to interpolate)."""

_COMMON = frozenset({"output_dir", "seed", "device", "dtype", "log_level", "model", "tokenizer"})

_TRAINING = _COMMON | {
    "checkpointer",
    "resume_from_checkpoint",
    "overwrite",  # run into a folder that holds an earlier run's checkpoints (replacing them)
    "keep_last_n_checkpoints",
    "save_every_n_steps",
    "save_adapter_weights_only",
    "dataset",
    "shuffle",
    "batch_size",
    "num_workers",
    "epochs",
    "max_steps_per_epoch",
    "gradient_accumulation_steps",
    "optimizer",
    "optimizer_in_bwd",
    "lr_scheduler",
    "loss",
    "clip_grad_norm",
    "compile",
    "enable_activation_checkpointing",
    "enable_activation_offloading",
    "custom_sharded_layers",
    "fsdp_cpu_offload",
    "fsdp_reshard_after_forward",
    "metric_logger",
    "log_every_n_steps",
    "log_peak_memory_stats",
    "profiler",
}

_PARALLEL = frozenset(
    {"tensor_parallel_dim", "tensor_parallel_plan", "expert_parallel_dim", "sequence_parallel"}
    | {"data_parallel_shard_dim", "data_parallel_replicate_dim"}
    | {"context_parallel_dim", "context_parallel_rotate_method"}  # training/context_parallel.py
    | {"context_parallel_method"}  # auto | ulysses | allgather (training/ulysses.py)
)
# finetune's sharded intermediate saves (recipes/_sharded_saves.py)
_SHARDED_SAVES = {
    "intermediate_checkpoint_format",  # dcp: sharded intermediate saves from every rank
    "enable_async_checkpointing",  # torchtune main: DCP intermediate saves, written async
}

TORCHTUNE_ACCEPTED: dict[str, frozenset[str]] = {
    # torchtune 0.6.1 configs carry these; tunesmith picks its own collate function, shards
    # with FSDP2 defaults, loads on the meta device anyway, so they change
    # nothing here but must not make the config invalid.
    "finetune": frozenset(
        {"collate_fn", "fsdp", "low_cpu_ram"}
        | {"name"}  # torchtune main's dev/3B_sft_for_grpo: the run name output_dir interpolates
    ),
    "qat": frozenset({"collate_fn", "fsdp", "low_cpu_ram"}),
    "dpo": frozenset({"collate_fn"}),
    "knowledge_distillation": frozenset({"collate_fn"}),
    # torchtune's dev GRPO configs: `name` and `base_model_path` are interpolated values
    "grpo": frozenset({"name", "base_model_path"}),
    "eval": frozenset({"resume_from_checkpoint"}),
    # torchtune main's *_generation_distributed (dev/generate_v2_distributed): with
    # use_distributed_state_dict torchtune loads the full checkpoint into the sharded model
    # through DCP's set_model_state_dict; tunesmith always loads that way (each rank copies
    # its tensor-parallel slices out of the full checkpoint, recipes/generate.load_model),
    # so True and False load the same weights. use_flex picks FlexAttention for the masks;
    # tunesmith picks its attention kernel itself (attention_kernels), the same attention.
    "generate": frozenset({"quantizer", "use_distributed_state_dict", "use_flex"}),
}

KEYS: dict[str, frozenset[str]] = {
    "finetune": frozenset(
        _TRAINING
        | {"dataset_val", "batch_size_val", "run_val_every_n_steps"}
        | {"router_aux_loss_coef", "router_z_loss_coef"}  # training.router_loss (MoE models)
        | {"upload_to_hub"}  # publish the final checkpoint (training/hub_upload.py)
        | _PARALLEL  # tensor parallel x FSDP2 / HSDP (training/parallel_dims.py)
        | _SHARDED_SAVES
        | {"datasets", "dataloader"}  # torchtune main's weighted mix (datasets/_mix.py)
    ),
    "qat": frozenset(
        _TRAINING
        | {"dataset_val", "batch_size_val", "run_val_every_n_steps", "upload_to_hub"}
        | {"quantizer", "fake_quant_after_n_steps"}
    ),
    "dpo": frozenset(
        _TRAINING | {"ref_checkpointer", "upload_to_hub"} | _PARALLEL | _SHARDED_SAVES
    ),
    "reward_model": frozenset(_TRAINING | {"upload_to_hub"}),
    "grpo": frozenset(
        _TRAINING
        | {"ref_checkpointer", "grpo_samples", "forward_batch_size", "max_generated_tokens"}
        | {"temperature", "top_k", "top_p", "stop_token_ids", "ppo_epochs", "num_steps"}
        | {"reward_functions", "reward_weights", "scale_rewards", "save_every_n_epochs"}
        | {"enable_kv_cache"}
    ),
    "knowledge_distillation": frozenset(
        _TRAINING
        | {"teacher_model", "teacher_checkpointer", "kd_loss", "kd_ratio", "upload_to_hub"}
        | _PARALLEL
        | _SHARDED_SAVES
    ),
    "ppo": frozenset(
        (_TRAINING - {"model", "epochs", "max_steps_per_epoch", "save_adapter_weights_only"})
        | {"policy_model", "reward_and_value_model", "ref_policy_checkpointer"}
        | {"value_checkpointer", "reward_checkpointer", "num_steps", "ppo_epochs"}
        | {"ppo_batch_size", "forward_batch_size", "temperature", "top_k"}
        | {"max_generated_tokens", "min_response_length", "penalise_no_eos", "reward_penalty"}
        | {"stop_token_ids", "whiten_rewards", "gamma", "lmbda", "kl_coeff", "enable_kv_cache"}
    ),
    "generate": frozenset(
        _COMMON
        | {"checkpointer", "prompt", "max_new_tokens", "temperature", "top_k", "top_p"}
        | {"enable_kv_cache"}
        | {"tensor_parallel_dim", "tensor_parallel_plan"}  # under torchrun (generation_mesh)
    ),
    "eval": frozenset(
        _COMMON
        | {"checkpointer", "quantizer", "tasks", "limit", "num_fewshot", "batch_size"}
        | {"max_seq_length", "enable_kv_cache", "add_bos_token", "include_path", "log_samples"}
        | {"apply_chat_template", "fewshot_as_multiturn", "system_instruction"}
        | {"overwrite"}  # replace an earlier results.json in output_dir
    ),
    "quantize": frozenset(
        _COMMON
        | {"checkpointer", "quantizer", "output_format", "gguf_type", "tokenizer_dir"}
        | {"overwrite"}  # replace an earlier quantized model in output_dir
    ),
}
"""Recipe name -> the top-level keys it reads."""


def recipe_keys(recipe: str) -> frozenset[str] | None:
    """Every top-level key valid for ``recipe`` (read or accepted), or None when unknown."""
    keys = KEYS.get(recipe)
    if keys is None:
        return None
    return keys | TORCHTUNE_ACCEPTED.get(recipe, frozenset()) | {EXTRA_KEY}


SUPPLIED: dict[str, tuple[int, frozenset[str]]] = {
    # component key -> (positional arguments the recipe passes, keyword arguments it passes)
    "dataset": (1, frozenset()),  # instantiate(node, tokenizer)
    "dataset_val": (1, frozenset()),
    "optimizer": (1, frozenset()),  # instantiate(cfg.optimizer, model.parameters())
    "lr_scheduler": (1, frozenset({"num_training_steps"})),  # (optimizer, num_training_steps=)
    "checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "ref_checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "teacher_checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "ref_policy_checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "value_checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "reward_checkpointer": (0, frozenset({"resume_from_checkpoint"})),
    "tensor_parallel_plan": (0, frozenset({"model"})),  # instantiate(node, model=model)
}
"""What the recipes pass to ``instantiate`` themselves, so ``validate`` does not ask for it."""
