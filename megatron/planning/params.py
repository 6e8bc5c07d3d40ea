"""How many parameters each rank of a layout holds, counted from the model's shape alone.

The counts follow this toolkit's model code (``megatron/model/gpt.py``, ``transformer.py``, ``mlp.py``,
``moe.py``) rather than a textbook formula, so that they equal the parameters of the built model: the
word table and output layer split by vocabulary over the T ranks, norms and the row-parallel biases
replicated, SwiGLU's first projection twice as wide, grouped-query attention's narrower key/value
projection, and DeepSpeed's MoE layer (a gate, E / EP experts per rank that are not split over T, and with
Residual MoE a dense MLP and a two-way coefficient). Under pipeline parallelism the stages are the ones
DeepSpeed's ``PipelineModule`` cuts with the toolkit's default ``--pipeline-partition-method parameters``,
computed by DeepSpeed's own balancing function over the same per-layer counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deepspeed.runtime.utils import partition_balanced

from megatron.config.schema import ModelConfig, MoEConfig
from megatron.planning.layout import Layout


@dataclass(frozen=True)
class ParameterCounts:
    """``per_rank``: the parameters of the most loaded rank (the pipeline stage holding the most, MoE
    experts already divided over the expert-parallel ranks); ``per_stage``: those of one rank of each
    pipeline stage; ``total``: the whole model, each weight once."""

    per_rank: int
    per_stage: tuple[int, ...]
    total: int


def _norm(model: ModelConfig) -> int:
    """LayerNorm has a weight and a bias, RMSNorm only a weight."""
    return model.hidden_size * (1 if model.normalization == "rmsnorm" else 2)


def _tensor_split(size: int, tensor_parallel: int, what: str) -> int:
    if size % tensor_parallel != 0:
        raise ValueError(
            f"{what} ({size}) is not divisible by the tensor-parallel size {tensor_parallel}; choose a "
            "--tensor-model-parallel-size that divides it"
        )
    return size // tensor_parallel


def attention_parameters(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """The fused query/key/value projection (column-parallel) and the output projection (row-parallel,
    its bias replicated)."""
    hidden, bias = model.hidden_size, model.add_bias_linear
    projection = model.num_attention_heads * model.head_dim
    qkv = _tensor_split(projection + 2 * model.kv_heads * model.head_dim, tensor_parallel, "query/key/value")
    dense_in = _tensor_split(projection, tensor_parallel, "attention projection")
    return hidden * qkv + bias * qkv + dense_in * hidden + bias * hidden


def mlp_parameters(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """h -> parts x ffn (SwiGLU: [gate; up], two parts) column-parallel, then ffn -> h row-parallel."""
    hidden, bias = model.hidden_size, model.add_bias_linear
    first = _tensor_split((2 if model.swiglu else 1) * model.ffn_hidden_size, tensor_parallel, "MLP width")
    ffn = _tensor_split(model.ffn_hidden_size, tensor_parallel, "--ffn-hidden-size")
    return hidden * first + bias * first + ffn * hidden + bias * hidden


def moe_mlp_parameters(model: ModelConfig, moe: MoEConfig, experts: int, expert_parallel: int) -> int:
    """DeepSpeed's MoE layer on one rank: the gate (h x E, no bias), this rank's E / EP whole experts, and
    with Residual MoE a dense MLP and the coefficient layer (h -> 2 with bias)."""
    if experts % expert_parallel != 0:
        raise ValueError(
            f"--num-experts {experts} is not divisible by the expert-parallel size {expert_parallel}; "
            "choose an --expert-parallel-size (--moe-expert-parallel-size) that divides it"
        )
    count = model.hidden_size * experts + experts // expert_parallel * mlp_parameters(model)
    if moe.mlp_type == "residual":
        count += mlp_parameters(model) + 2 * model.hidden_size + 2
    return count


def layer_parameters(
    model: ModelConfig, tensor_parallel: int = 1, moe: MoEConfig | None = None, layer_number: int = 0
) -> int:
    """One transformer layer on one rank: two norms, attention and the (dense or expert) MLP."""
    experts = moe.experts_at(layer_number) if moe is not None else 1
    if experts > 1:
        mlp = moe_mlp_parameters(model, moe, experts, moe.expert_parallel_size)
    else:
        mlp = mlp_parameters(model, tensor_parallel)
    return 2 * _norm(model) + attention_parameters(model, tensor_parallel) + mlp


def embedding_parameters(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """The vocabulary-split word table and the replicated learned position table (if any)."""
    words = _tensor_split(model.padded_vocab_size, tensor_parallel, "padded vocabulary") * model.hidden_size
    positions = model.max_position_embeddings * model.hidden_size if model.learned_position_embeddings else 0
    return words + positions


def output_layer_parameters(model: ModelConfig, tensor_parallel: int = 1) -> int:
    """An untied output layer's vocabulary-split weight (0 when the logits go through the word table)."""
    if not model.untie_embeddings_and_output_weights:
        return 0
    return _tensor_split(model.padded_vocab_size, tensor_parallel, "padded vocabulary") * model.hidden_size


def pipeline_layer_weights(model: ModelConfig, tensor_parallel: int, moe: MoEConfig | None) -> list[int]:
    """The per-rank parameters of each entry of ``gpt_pipeline_module``'s layer list, as DeepSpeed counts
    them to balance the stages: the embedding, the transformer layers, the final norm, and the logits'
    module (the tied embedding again, position table included, or the untied output layer)."""
    layers = [layer_parameters(model, tensor_parallel, moe, number) for number in range(model.num_layers)]
    if model.untie_embeddings_and_output_weights:
        logits = output_layer_parameters(model, tensor_parallel)
    else:
        logits = embedding_parameters(model, tensor_parallel)
    return [embedding_parameters(model, tensor_parallel), *layers, _norm(model), logits]


def stage_boundaries(model: ModelConfig, layout: Layout, moe: MoEConfig | None = None) -> list[int]:
    """Where DeepSpeed cuts :func:`pipeline_layer_weights` into stages (``partition_method`` "parameters")."""
    weights = pipeline_layer_weights(model, layout.tensor_parallel, moe)
    return [int(part) for part in partition_balanced(weights=weights, num_parts=layout.pipeline_parallel)]


def stage_layers(model: ModelConfig, layout: Layout, moe: MoEConfig | None = None) -> list[int]:
    """How many transformer layers each pipeline stage runs."""
    if layout.pipeline_parallel == 1:
        return [model.num_layers]
    parts = stage_boundaries(model, layout, moe)
    # Entries 1..num_layers of the layer list are the transformer layers.
    return [max(0, min(stop, model.num_layers + 1) - max(start, 1)) for start, stop in zip(parts, parts[1:])]


def count_parameters(model: ModelConfig, layout: Layout, moe: MoEConfig | None = None) -> ParameterCounts:
    """Parameters per rank of each pipeline stage, the most loaded, and the whole model's."""
    tensor = layout.tensor_parallel
    if layout.pipeline_parallel == 1:
        layers = sum(layer_parameters(model, tensor, moe, number) for number in range(model.num_layers))
        stages = (
            embedding_parameters(model, tensor)
            + layers
            + _norm(model)
            + output_layer_parameters(model, tensor),
        )
    else:
        weights = pipeline_layer_weights(model, tensor, moe)
        parts = stage_boundaries(model, layout, moe)
        stages = tuple(sum(weights[start:stop]) for start, stop in zip(parts, parts[1:]))
    single = None if moe is None else replace(moe, expert_parallel_size=1)
    layers = sum(layer_parameters(model, 1, single, number) for number in range(model.num_layers))
    total = embedding_parameters(model) + layers + _norm(model) + output_layer_parameters(model)
    return ParameterCounts(per_rank=max(stages), per_stage=stages, total=total)
