"""GPT as a list of DeepSpeed pipeline layers, for ``--pipeline-model-parallel-size`` > 1.

The stages reuse the modules of :mod:`megatron.model.gpt` (embedding, transformer layers, final LayerNorm),
so a pipeline-parallel model computes exactly what the plain one does; the word embedding is a
``TiedLayerSpec`` on the first and last stage, whose gradients DeepSpeed sums across the two.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.gpt import Embedding, OutputLayer, language_model_loss, parallel_lm_logits
from megatron.model.transformer import ParallelTransformerLayer
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import LayerNorm, RMSNorm

TIED_EMBEDDING = "embedding"


class EmbeddingPipe(Embedding):
    """First stage: tokens in, hidden states out. On the last stage it only lends its word table."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens)


class TransformerLayerPipe(ParallelTransformerLayer):
    """One layer; the class name is what DeepSpeed's ``checkpointable_layers`` matches."""


class FinalLayerNormPipe(LayerNorm):
    pass


class FinalRMSNormPipe(RMSNorm):
    pass


class OutputLayerPipe(OutputLayer):
    """Last stage of an untied model (``--untie-embeddings-and-output-weights``): hidden states in, this
    rank's vocabulary slice of the logits out."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return parallel_lm_logits(hidden, self.weight, self.context)


def _logits_from_tied_embedding(embedding: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    return parallel_lm_logits(hidden, embedding.word_embeddings.weight, embedding.context)


def output_specs(config: ModelConfig, context: ParallelContext, seed: int) -> list[LayerSpec]:
    """The final norm and the logits: through the word embedding, tied to the first stage's, or through an
    output layer of its own."""
    final_norm = FinalRMSNormPipe if config.normalization == "rmsnorm" else FinalLayerNormPipe
    specs = [LayerSpec(final_norm, config.hidden_size, config.layernorm_epsilon, context)]
    if config.untie_embeddings_and_output_weights:
        return [*specs, LayerSpec(OutputLayerPipe, config, context, seed)]
    tied = TiedLayerSpec(
        TIED_EMBEDDING,
        EmbeddingPipe,
        config,
        context,
        seed,
        forward_fn=_logits_from_tied_embedding,
        tied_weight_attr="word_embeddings.weight",
    )
    return [*specs, tied]


class _PipelineLoss:
    """The last stage's loss on ``(labels, loss_mask)``; a class so that it pickles and knows the context."""

    def __init__(self, context: ParallelContext):
        self.context = context

    def __call__(self, logits: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        target, loss_mask = labels
        return language_model_loss(logits, target, loss_mask, self.context)


def gpt_pipeline_module(
    config: ModelConfig,
    context: ParallelContext,
    seed: int,
    recompute: RecomputeConfig,
    partition_method: str,
) -> PipelineModule:
    """Build this stage's share of the GPT layers. ``context`` must come from ``build_parallel_context`` with
    the same sizes: DeepSpeed's topology below orders ranks the same way (model, then data, then pipe)."""
    data_size = context.data_size
    topology = PipeModelDataParallelTopology(
        num_pp=context.pipeline_size, num_mp=context.tensor_size, num_dp=data_size
    )
    specs: list[LayerSpec | TiedLayerSpec] = [
        TiedLayerSpec(
            TIED_EMBEDDING, EmbeddingPipe, config, context, seed, tied_weight_attr="word_embeddings.weight"
        )
    ]
    for number in range(config.num_layers):
        specs.append(
            LayerSpec(
                TransformerLayerPipe,
                config,
                context,
                number,
                seed,
                recompute_core=recompute.granularity == "selective",
            )
        )
    specs += output_specs(config, context, seed)
    module = PipelineModule(
        layers=specs,
        loss_fn=_PipelineLoss(context),
        topology=topology,
        partition_method=partition_method,
        activation_checkpoint_interval=uniform_recompute_interval(recompute),
        checkpointable_layers=[TransformerLayerPipe.__name__],
    )
    mark_block_recompute(module, TransformerLayerPipe, recompute)
    return module


def uniform_recompute_interval(recompute: RecomputeConfig) -> int:
    """``--recompute-method uniform``: DeepSpeed recomputes every num_layers consecutive layers as one
    chunk (0: no chunked recomputation)."""
    if recompute.granularity == "full" and recompute.method == "uniform":
        return recompute.num_layers
    return 0


def mark_block_recompute(module: PipelineModule, layer_class: type, recompute: RecomputeConfig) -> None:
    """``--recompute-method block``: the first num_layers transformer layers of this stage recompute."""
    if recompute.granularity == "full" and recompute.method == "block":
        stage_layers = [layer for layer in module.forward_funcs if isinstance(layer, layer_class)]
        for layer in stage_layers[: recompute.num_layers]:
            layer.recompute_layer = True
