"""BERT as a list of DeepSpeed pipeline layers, for ``pretrain_bert.py --pipeline-model-parallel-size`` > 1.

The layers are those of :class:`megatron.model.bert.BertModel`, built from the same init generators, so a
pipeline of any depth starts from the weights one process builds and computes what it computes::

    0        embedding (word + position + token type), tied to the last stage's copy
    1..L     bidirectional transformer layers under the padding mask
    L + 1    final LayerNorm
    L + 2    the last stage's copy of the tied embedding, lending its word table to the heads (no file)
    L + 3    the heads: masked-LM (through that word table) and, with the binary head, pooler + sentence order

Between stages travel ``(hidden states, padding mask)``; the mask stays an integer tensor, which DeepSpeed
sends without a gradient. The token types are needed by the embedding only, so they stop there.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from torch import nn

from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.bert import (
    NUM_TOKENTYPES,
    BertLMHead,
    Pooler,
    padding_attention_mask,
    sentence_order_head,
    sentence_order_loss,
)
from megatron.model.gpt import Embedding, language_model_loss
from megatron.model.gpt_pipe import TIED_EMBEDDING, mark_block_recompute, uniform_recompute_interval
from megatron.model.transformer import ParallelTransformerLayer
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import LayerNorm

PipeInputs = tuple[torch.Tensor, ...]


class BertEmbeddingPipe(Embedding):
    """First stage: ``(tokens, padding mask, token types)`` in, ``(hidden, padding mask)`` out."""

    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int):
        super().__init__(config, context, seed, num_tokentypes=NUM_TOKENTYPES)

    def forward(self, inputs: PipeInputs) -> PipeInputs:
        tokens, padding_mask, tokentype_ids = inputs
        return super().forward(tokens, tokentype_ids=tokentype_ids), padding_mask


class BertTransformerLayerPipe(ParallelTransformerLayer):
    """One bidirectional layer; the class name is what DeepSpeed's ``checkpointable_layers`` matches."""

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        layer_number: int,
        seed: int,
        recompute_core: bool,
    ):
        super().__init__(config, context, layer_number, seed, recompute_core=recompute_core, causal=False)

    def forward(self, inputs: PipeInputs) -> PipeInputs:
        hidden, padding_mask = inputs
        return super().forward(hidden, padding_attention_mask(padding_mask)), padding_mask


class BertFinalLayerNormPipe(LayerNorm):
    """The encoder's final LayerNorm; the padding mask is not needed past it."""

    def forward(self, inputs: PipeInputs) -> torch.Tensor:
        hidden, _ = inputs
        return super().forward(hidden)


def _lend_word_embeddings(embedding: BertEmbeddingPipe, hidden: torch.Tensor) -> PipeInputs:
    """DeepSpeed hands a tied module to its own layer only, so the table goes on to the heads with the
    hidden states (within the last stage, see :func:`check_heads_on_last_stage`)."""
    return hidden, embedding.word_embeddings.weight


class BertHeadsPipe(nn.Module):
    """The plain model's heads under the plain model's parameter names (``lm_head.``, ``binary_head.``,
    ``language_model.pooler.``), so their checkpoint file maps to the full model without renaming.

    Returns the vocabulary-split masked-LM logits, and with the binary head also the sentence-order logits.
    """

    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int, binary_head: bool):
        super().__init__()
        # In the plain model's order, so that merged checkpoints list the keys as it does.
        self.language_model = nn.ModuleDict({"pooler": Pooler(config, seed)}) if binary_head else None
        self.lm_head = BertLMHead(config, context, seed)
        self.binary_head = sentence_order_head(config, seed) if binary_head else None

    def forward(self, inputs: PipeInputs) -> torch.Tensor | PipeInputs:
        hidden, word_embeddings = inputs
        lm_logits = self.lm_head(hidden, word_embeddings)
        if self.binary_head is None:
            return lm_logits
        return lm_logits, self.binary_head(self.language_model["pooler"](hidden))


class BertPipelineLoss(nn.Module):
    """The last stage's loss on DeepSpeed's labels ``(lm labels, loss mask[, sentence order])``.

    Training backpropagates masked-LM + sentence-order loss, as the plain model's step does, and keeps the
    sentence-order part for :meth:`BertPipelineModule.get_additional_losses`. Evaluation returns the
    masked-LM loss alone, the validation loss of the plain model. A module, so that the pipeline's
    ``eval()`` reaches it.
    """

    def __init__(self, context: ParallelContext):
        super().__init__()
        self.context = context
        self.last_sop_loss: torch.Tensor | None = None

    def forward(self, outputs: torch.Tensor | PipeInputs, labels: PipeInputs) -> torch.Tensor:
        lm_labels, loss_mask, *sentence_order = labels
        lm_logits, *binary_logits = (outputs,) if torch.is_tensor(outputs) else outputs
        lm_loss = language_model_loss(lm_logits, lm_labels, loss_mask, self.context)
        if not self.training or not binary_logits:
            return lm_loss
        sop_loss = sentence_order_loss(binary_logits[0], sentence_order[0])
        self.last_sop_loss = sop_loss.detach()
        return lm_loss + sop_loss


class BertPipelineModule(PipelineModule):
    """DeepSpeed's ``PipelineModule`` naming BERT's sentence-order loss as an additional loss.

    DeepSpeed's pipeline engine keeps one loss per batch (here lm + sop, the loss that is backpropagated);
    the losses this module names it sums over the micro batches beside it, averages over data-parallel
    ranks and broadcasts to every stage (``agg_additional_losses``), so the step can log the two apart
    (:func:`megatron.training.step.pipeline_train_step`). Stages without the loss only lend the name.
    """

    aux_loss_name = "sop loss"

    def __init__(self, *args, binary_head: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.binary_head = binary_head

    def get_additional_losses(self) -> OrderedDict[str, torch.Tensor] | None:
        if not self.binary_head:
            return None
        sop_loss = self.loss_fn.last_sop_loss
        return OrderedDict({self.aux_loss_name: sop_loss if sop_loss is not None else torch.zeros(())})


def check_heads_on_last_stage(module: PipelineModule, heads_index: int, partition_method: str) -> None:
    """The lent word table must reach the heads within the last stage: across a stage boundary the
    parameter would travel as an activation, a vocabulary-sized copy per micro batch, which DeepSpeed's
    partitioned sends under tensor parallelism refuse. Every rank sees the same partition, so all fail
    alike."""
    if module.parts[-2] >= heads_index:
        raise ConfigError(
            f"--pipeline-partition-method {partition_method} puts BERT's heads (pipeline layer "
            f"{heads_index}) on a stage of their own, apart from the output word embedding they use; use "
            "--pipeline-partition-method parameters, more --num-layers, or a smaller "
            "--pipeline-model-parallel-size."
        )


def bert_pipeline_module(
    config: ModelConfig,
    context: ParallelContext,
    seed: int,
    recompute: RecomputeConfig,
    partition_method: str,
    binary_head: bool,
) -> BertPipelineModule:
    """Build this stage's share of the BERT layers. ``context`` must come from ``build_parallel_context``
    with the same sizes: DeepSpeed's topology below orders ranks the same way (model, then data, then pipe).
    Recomputation is set up as in :func:`megatron.model.gpt_pipe.gpt_pipeline_module`."""
    topology = PipeModelDataParallelTopology(
        num_pp=context.pipeline_size, num_mp=context.tensor_size, num_dp=context.data_size
    )
    embedding = (TIED_EMBEDDING, BertEmbeddingPipe, config, context, seed)
    specs: list[LayerSpec] = [TiedLayerSpec(*embedding, tied_weight_attr="word_embeddings.weight")]
    selective = recompute.granularity == "selective"
    specs += [
        LayerSpec(BertTransformerLayerPipe, config, context, number, seed, selective)
        for number in range(config.num_layers)
    ]
    specs += [
        LayerSpec(BertFinalLayerNormPipe, config.hidden_size, config.layernorm_epsilon, context),
        TiedLayerSpec(
            *embedding, forward_fn=_lend_word_embeddings, tied_weight_attr="word_embeddings.weight"
        ),
        LayerSpec(BertHeadsPipe, config, context, seed, binary_head),
    ]
    module = BertPipelineModule(
        layers=specs,
        loss_fn=BertPipelineLoss(context),
        topology=topology,
        partition_method=partition_method,
        activation_checkpoint_interval=uniform_recompute_interval(recompute),
        checkpointable_layers=[BertTransformerLayerPipe.__name__],
        binary_head=binary_head,
    )
    check_heads_on_last_stage(module, len(specs) - 1, partition_method)
    mark_block_recompute(module, BertTransformerLayerPipe, recompute)
    return module
