"""Generation from checkpoints that pretrain_gpt.py wrote: a model trained on verses of the bundled corpus
continues them; the server under torchrun with tensor parallelism 2, on a T=2 x P=2 conversion of the
checkpoint, answers what one process answers from the original; a MoE checkpoint generates."""

from __future__ import annotations

import json

import pytest
import torch

from megatron.config.arguments import parse_args
from megatron.text_generation.api import SamplingOptions
from megatron.text_generation.client import generate_remote
from megatron.text_generation.loading import build_text_generator, read_generation_checkpoint
from tests.launch import (
    GPT2_TOKENIZER_FLAGS,
    LLAMA_FLAGS,
    REPO_ROOT,
    LiveRun,
    free_port,
    launch,
    pretrain_command,
    run_pretrain,
    tiny_model_flags,
    write_ds_config,
)

pytestmark = pytest.mark.slow

VERSES = (
    "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; and "
    "darkness was upon the face of the deep."
)
PROMPTS = ["In the beginning God", "And the earth was without form,"]


@pytest.fixture(scope="module")
def memorized(tmp_path_factory: pytest.TempPathFactory):
    """A small GPT trained until it knows the first verses of Genesis (the bundled corpus's start) by
    heart; returns its checkpoint folder."""
    from tools.preprocess_data import main as preprocess

    folder = tmp_path_factory.mktemp("memorized")
    first_document = json.loads((REPO_ROOT / "data" / "corpus" / "kjv.jsonl").open().readline())["text"]
    assert VERSES in first_document
    corpus = folder / "verses.jsonl"
    corpus.write_text((json.dumps({"text": VERSES}) + "\n") * 300)
    preprocess(
        ["--input", str(corpus), "--output-prefix", str(folder / "verses"), "--json-keys", "text",
         *GPT2_TOKENIZER_FLAGS, "--append-eod", "--workers", "1"]
    )  # fmt: skip
    save = folder / "ckpt"
    ds_config = write_ds_config(folder / "ds.json", 0, train_micro_batch_size_per_gpu=8)
    run_pretrain(
        [
            "--num-layers", "2", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "64",
            "--max-position-embeddings", "64", "--micro-batch-size", "8", "--global-batch-size", "8",
            "--train-iters", "200", "--lr", "3e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine",
            "--lr-warmup-iters", "10", "--attention-dropout", "0", "--hidden-dropout", "0",
            "--data-path", str(folder / "verses_text_document"), "--split", "100,0,0", *GPT2_TOKENIZER_FLAGS,
            "--log-interval", "50", "--eval-iters", "0", "--num-workers", "0", "--save", str(save),
            "--deepspeed", "--deepspeed_config", str(ds_config),
        ],
        launcher="python",
    ).check()  # fmt: skip
    return save


def test_a_trained_model_continues_its_text(memorized, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples.txt"
    flags = [
        "--load", str(memorized), "--sample-input-file", str(prompts), "--sample-output-file", str(out),
        "--out-seq-length", "24", "--greedy", "--micro-batch-size", "2",
    ]  # fmt: skip
    # A free MASTER_PORT: the session's may be held by this pytest process's own process group.
    command, env = pretrain_command(flags, launcher="python", script="tools/generate_samples_gpt.py")
    completed = launch(command, env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    samples = out.read_text()
    assert (
        "Context: In the beginning God\n\nMegatron-LM:  created the heaven and the earth.\nAnd the earth"
        in samples
    )
    assert "Megatron-LM:  and void; and darkness was upon the face of the deep." in samples


@pytest.fixture(scope="module")
def llama_checkpoint(gpt_data_prefix, tmp_path_factory: pytest.TempPathFactory):
    """A LLaMA-style model (rotary, SwiGLU, RMSNorm, no biases, untied, 4 heads sharing 2 key/value
    heads) after 3 iterations."""
    folder = tmp_path_factory.mktemp("llama")
    flags = tiny_model_flags(gpt_data_prefix, train_iters=3) + LLAMA_FLAGS + [
        "--save", str(folder / "ckpt"), "--deepspeed_config", str(write_ds_config(folder / "ds.json", 0)),
    ]  # fmt: skip
    run_pretrain(flags, launcher="python").check()
    return folder / "ckpt"


@pytest.mark.parametrize("checkpoint", ["memorized", "llama_checkpoint"])
def test_tensor_parallel_server_answers_what_one_process_does(checkpoint, request, tmp_path):
    from tools.checkpoint_util import main as convert

    source = request.getfixturevalue(checkpoint)
    converted = tmp_path / "t2p2"
    convert(
        ["--load-dir", str(source), "--save-dir", str(converted),
         "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"]
    )  # fmt: skip
    args = parse_args(["--load", str(source)])
    full, tokenizer = read_generation_checkpoint(args)
    reference = build_text_generator(args, full, tokenizer, torch.device("cpu"))
    expected = reference.generate(
        PROMPTS, SamplingOptions(tokens_to_generate=12, top_k=1, return_logprobs=True)
    )
    scored = reference.generate(PROMPTS, SamplingOptions(tokens_to_generate=0, return_logprobs=True))

    port = free_port()
    server_flags = ["--load", str(converted), "--tensor-model-parallel-size", "2", "--port", str(port)]
    command, env = pretrain_command(server_flags, nproc=2, script="tools/run_text_generation_server.py")
    server = LiveRun(command, env)
    try:
        server.wait_for("Uvicorn running on", timeout=180)
        answer = generate_remote(f"127.0.0.1:{port}", PROMPTS, tokens_to_generate=12, top_k=1, logprobs=True)
        score = generate_remote(f"127.0.0.1:{port}", PROMPTS, tokens_to_generate=0, logprobs=True)
    finally:
        server.kill()
    assert answer["tokens"] == expected.tokens
    assert answer["text"] == expected.texts
    for got, want in ((answer, expected), (score, scored)):
        for row, reference_row in zip(got["logprobs"], want.logprobs, strict=True):
            torch.testing.assert_close(torch.tensor(row), torch.tensor(reference_row), atol=1e-5, rtol=1e-5)


def test_a_moe_checkpoint_generates_with_every_expert(gpt_data_prefix, tmp_path, single_process_group):
    """DeepSpeed stores each expert in a file of its own; generation loads them all and routes every token
    (no capacity drop), so greedy decoding through the cache is the argmax of full forwards."""
    save = tmp_path / "moe"
    flags = tiny_model_flags(gpt_data_prefix, train_iters=3) + [
        "--num-experts", "2", "--expert-interval", "1", "--save", str(save),
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)),
    ]  # fmt: skip
    run_pretrain(flags, launcher="python").check()
    args = parse_args(["--load", str(save)])
    full, tokenizer = read_generation_checkpoint(args)
    experts = {name: tensor for name, tensor in full.state_dict.items() if ".deepspeed_experts." in name}
    assert len(experts) == 2 * 2 * 4  # layers x experts x (two weights, two biases)
    generator = build_text_generator(args, full, tokenizer, torch.device("cpu"))
    loaded = generator.model.state_dict()
    for name, tensor in experts.items():
        torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0)
    result = generator.generate(PROMPTS[:1], SamplingOptions(tokens_to_generate=6, top_k=1))
    tokens, start = result.tokens[0], result.prompt_lengths[0]
    with torch.no_grad():
        for position in range(start, len(tokens)):
            logits = generator.model(torch.tensor([tokens[:position]]))[0, -1, : tokenizer.vocab_size]
            assert tokens[position] == int(logits.argmax())
