"""The lm-evaluation-harness adapter (megatron/evaluation/harness.py) and its entry point
(tasks/eval_harness/evaluate.py), against the harness's own HF model (``lm_eval.models.huggingface.HFLM``,
which runs ``transformers``) on the HF export of the same random model: every request type answers as
HFLM does, and the entry point's results JSON holds HFLM's metrics on three local tasks the tests write
(multiple choice, generate-until, rolling log-likelihood; no download). The slow test runs the entry point
under torchrun with tensor parallelism 2 and compares with one process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"  # the tasks read local json files; nothing may be downloaded
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # HFLM imports it

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from megatron.checkpointing.hf_gpt2 import to_gpt2  # noqa: E402
from megatron.checkpointing.layout import FullModel, write_model_checkpoint  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.config.schema import ParallelConfig  # noqa: E402
from megatron.evaluation.harness import HarnessModel, rolling_samples  # noqa: E402
from megatron.model import GPTModel  # noqa: E402
from megatron.text_generation.generator import ModelTextGenerator  # noqa: E402
from tasks.eval_harness.evaluate import main as evaluate_main  # noqa: E402
from tests.data.corpora import MERGES, VOCAB  # noqa: E402
from tests.evaluation.test_zeroshot import LAMBADA, WIKITEXT, random_models  # noqa: E402
from tests.launch import REPO_ROOT, child_env, free_port  # noqa: E402
from tests.text_generation.conftest import TINY_GPT  # noqa: E402
from tools.convert_checkpoint_to_hf import write_tokenizer_files  # noqa: E402

MAX_LENGTH = 64  # the tiny model's positions
TOKENIZER_DATA = {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": VOCAB, "merge_file": MERGES}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """The bundled GPT-2 BPE as transformers loads it from an exported HF folder."""
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    write_tokenizer_files(str(folder), TOKENIZER_DATA, MAX_LENGTH)
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, hf_tokenizer):
    """Ours, as the harness adapter (batches of 3), and the harness's HF model on its export (one request a
    batch, so that no padding enters the reference)."""
    from megatron.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES, None)
    ours, hf = random_models(request.param, tokenizer.vocab_size)
    adapter = HarnessModel(ModelTextGenerator(ours, tokenizer), batch_size=3)
    return adapter, HFLM(pretrained=hf, tokenizer=hf_tokenizer, batch_size=1, device="cpu"), hf


def instances(request_type: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type, {}, args, index) for index, args in enumerate(arguments)]


# --- Request types against HFLM -----------------------------------------------------------------------------


def test_loglikelihood_equals_hflm(models):
    adapter, reference, _ = models
    long_context = " ".join(LAMBADA)  # past the 64 positions: both cut it from the left
    pairs = [
        ("the old man walked to the river", " every morning"),
        ("she opened the door and called for her", " dog"),
        ("", "In the beginning"),  # no context: conditioned on the end-of-document id
        (long_context, " playing the piano"),
        ("he played the piano all night long ", "until his fingers hurt"),  # the space moves over
    ]
    # One more pair built to be greedy: its continuation is the model's own argmax continuation.
    greedy = adapter.generate_until(
        instances("generate_until", [(pairs[0][0], {"max_gen_toks": 3, "until": []})])
    )
    pairs.append((pairs[0][0], greedy[0]))
    ours = adapter.loglikelihood(instances("loglikelihood", pairs))
    expected = reference.loglikelihood(instances("loglikelihood", pairs))
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in expected]
    assert ours[-1][1]
    for (logprob, _), (hf_logprob, _) in zip(ours, expected, strict=True):
        assert logprob == pytest.approx(hf_logprob, rel=1e-5)


def test_loglikelihood_rolling_equals_hflm(models):
    adapter, reference, _ = models
    texts = [WIKITEXT, LAMBADA[0], "Amen."]  # several windows, the last one short; one window; a few tokens
    assert len(adapter.tok_encode(WIKITEXT)) % MAX_LENGTH > 0  # 388 tokens: 7 windows, the last moved back
    ours = adapter.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,) for text in texts]))
    expected = reference.loglikelihood_rolling(
        instances("loglikelihood_rolling", [(text,) for text in texts])
    )
    assert ours == pytest.approx(expected, rel=1e-5)


def test_overlapping_windows_give_every_token_its_longest_context(models):
    """With a stride of 1 each token is scored after the ``MAX_LENGTH`` tokens before it (or all there
    are): computed with transformers one prediction at a time."""
    adapter, _, hf = models
    tokens = adapter.tok_encode(WIKITEXT)[:100]
    overlapping = HarnessModel(adapter.generator, batch_size=8, rolling_stride=1)
    text = adapter.tokenizer.detokenize(tokens)
    assert adapter.tok_encode(text) == tokens
    ours = overlapping.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))[0]
    sequence = torch.tensor([adapter.prefix_token_id, *tokens])
    with torch.no_grad():
        # The first MAX_LENGTH tokens after their whole prefix: one causal forward.
        head = torch.log_softmax(hf(sequence[None, :MAX_LENGTH]).logits[0], -1)
        expected = head[:-1].gather(-1, sequence[1:MAX_LENGTH, None]).sum().item()
        # Each later token after exactly the MAX_LENGTH before it: a batch of sliding contexts.
        contexts = sequence[: len(sequence) - 1].unfold(0, MAX_LENGTH, 1)
        tail = torch.log_softmax(hf(contexts).logits[:, -1], -1)
        expected += tail.gather(-1, sequence[MAX_LENGTH:, None]).sum().item()
    assert ours == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_rolling_windows_score_every_token_once(stride):
    tokens = list(range(1, 151))
    windows = rolling_samples(tokens, prefix=0, max_length=16, stride=stride)
    scored = [target for window in windows for target in window.tokens[window.first_scored + 1 :]]
    assert scored == tokens
    assert all(len(window.tokens) <= 17 for window in windows)
    assert all(len(window.tokens) == 17 for window in windows[1:])  # after the first, full context


def test_a_tokenizer_that_adds_bos_gets_it_once(sentencepiece_model):
    """Llama2Tokenizer starts every text with bos: contexts keep it, as in training; a rolling text and a
    continuation without context are conditioned on it once."""
    from megatron.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model)
    model = GPTModel(dataclasses.replace(TINY_GPT, padded_vocab_size=1024), seed=3).eval()
    adapter = HarnessModel(ModelTextGenerator(model, tokenizer))
    text = "In the beginning God created the heaven and the earth."
    ids = tokenizer.tokenize(text, bos=False)
    assert adapter.prefix_token_id == tokenizer.bos and adapter.tok_encode(text) == [tokenizer.bos, *ids]
    assert adapter.tok_encode(text, add_special_tokens=False) == ids
    with torch.no_grad():
        logits = model(torch.tensor([[tokenizer.bos, *ids[:-1]]]))[0, :, : tokenizer.vocab_size]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).sum().item()
    assert adapter.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))[0] == pytest.approx(
        expected, rel=1e-5
    )
    assert adapter.loglikelihood(instances("loglikelihood", [("", text)]))[0][0] == pytest.approx(
        expected, rel=1e-5
    )


def test_generate_until_equals_hflm(models):
    adapter, reference, _ = models
    prompts = ["In the beginning God", "And the earth was", " ".join(LAMBADA)]  # the last one cut to fit
    free = adapter.generate_until(
        instances("generate_until", [(p, {"max_gen_toks": 12, "until": []}) for p in prompts])
    )
    # A stop string the first continuation reaches: its fourth and fifth tokens' text.
    stop = adapter.tokenizer.detokenize(adapter.tok_encode(free[0])[3:5])
    requests = [
        *[(prompt, {"max_gen_toks": 12, "until": [], "do_sample": False}) for prompt in prompts],
        (prompts[0], {"max_gen_toks": 12, "until": [stop]}),
        (prompts[1], {"max_gen_toks": 4, "until": ["\n\n"], "temperature": 0.0}),
    ]
    ours = adapter.generate_until(instances("generate_until", requests))
    expected = reference.generate_until(instances("generate_until", requests))
    assert ours == expected
    assert ours[:3] == free and ours[3] == free[0][: free[0].index(stop)] and stop not in ours[3]


def test_sampling_is_refused(models):
    adapter, _, _ = models
    with pytest.raises(ValueError, match="do_sample is not supported here"):
        adapter.generate_until(instances("generate_until", [("In", {"do_sample": True, "temperature": 1.0})]))


# --- The entry point ----------------------------------------------------------------------------------------

MC_DOCS = [
    {"question": "In the beginning God created the", "choices": ["heaven", "piano", "river"], "label": 0},
    {"question": "The ducks swam on the", "choices": ["door", "river", "night"], "label": 1},
    {"question": "She called again for the", "choices": ["dog", "morning", "fingers"], "label": 0},
    {"question": "He played the piano all", "choices": ["dog", "ducks", "night"], "label": 2},
]
GEN_DOCS = [
    {"prompt": "In the beginning God", "answer": " created"},
    {"prompt": "And the earth", "answer": " was"},
]
TASKS = {
    "tiny_choice": {
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    },
    "tiny_generate": {
        "output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    },
    "tiny_rolling": {
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": name} for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """The three tasks' YAMLs (JSON is YAML) over local json-lines files."""
    folder = tmp_path_factory.mktemp("harness_tasks")
    docs = {
        "tiny_choice": MC_DOCS,
        "tiny_generate": GEN_DOCS,
        "tiny_rolling": [{"text": WIKITEXT}, {"text": LAMBADA[1]}],
    }
    for name, config in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs[name]))
        task = {
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **config,
        }  # fmt: skip
        (folder / f"{name}.yaml").write_text(json.dumps(task))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random GPT-2 style model saved as a T=1 checkpoint naming the bundled tokenizer (its vocabulary
    padded as training pads it: 8192 tokens need no padding rows), and its HF export."""
    model_config = dataclasses.replace(TINY_GPT, padded_vocab_size=8192)
    ours = GPTModel(model_config, seed=11)
    hf_config, hf_state = to_gpt2(ours.state_dict(), model_config, 8192)
    hf = transformers.GPT2LMHeadModel(hf_config)
    hf.load_state_dict(hf_state, strict=True)
    config = {
        "model": dataclasses.asdict(model_config), "parallel": dataclasses.asdict(ParallelConfig()),
        "batch": {"data_parallel_size": 1}, "data": TOKENIZER_DATA,
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("harness_checkpoint")
    write_model_checkpoint(str(folder), FullModel(ours.state_dict(), config, 6, 48, 0, 1, 1), 1, 1)
    return folder, hf.eval()


def harness_flags(checkpoint_folder, task_folder, results) -> list[str]:
    return [
        "--load", str(checkpoint_folder), "--task_list", ",".join(TASKS),
        "--include_path", str(task_folder), "--only_include_path", "--results_path", str(results),
        "--num_fewshot", "1", "--micro-batch-size", "2", "--bootstrap_iters", "0", "--log_samples",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_results(checkpoint, task_folder, tmp_path_factory, single_process_group):
    results = tmp_path_factory.mktemp("harness_results") / "results.json"
    evaluate_main(harness_flags(checkpoint[0], task_folder, results))
    return json.loads(results.read_text())


def generated(results: dict) -> list[str]:
    """The tiny_generate task's continuations, by document."""
    samples = sorted(results["samples"]["tiny_generate"], key=lambda sample: sample["doc_id"])
    return [sample["filtered_resps"][0] for sample in samples]


def test_the_entry_point_writes_hflm_metrics(one_process_results, checkpoint, task_folder, hf_tokenizer):
    expected = lm_eval.simple_evaluate(
        model=HFLM(pretrained=checkpoint[1], tokenizer=hf_tokenizer, batch_size=1, device="cpu"),
        tasks=list(TASKS), num_fewshot=1, bootstrap_iters=0, log_samples=True,
        task_manager=TaskManager(include_path=str(task_folder), include_defaults=False),
    )  # fmt: skip
    reference, results = expected["results"], one_process_results["results"]
    assert set(results) == set(TASKS)
    metrics = {
        "tiny_choice": ["acc,none", "acc_norm,none"], "tiny_generate": ["exact_match,none"],
        "tiny_rolling": ["word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"],
    }  # fmt: skip
    for task, names in metrics.items():
        for name in names:
            assert results[task][name] == pytest.approx(reference[task][name], rel=1e-5), (task, name)
    # The generated texts themselves (a random model gets no answer right, so exact_match alone says little).
    assert generated(one_process_results) == generated(expected) and all(generated(expected))
    assert one_process_results["n-shot"] == {task: 1 for task in TASKS}
    assert one_process_results["config"]["model"] == str(checkpoint[0])


def test_bad_flags_name_the_flag(checkpoint, task_folder, tmp_path):
    flags = harness_flags(checkpoint[0], task_folder, tmp_path / "results.json")
    with pytest.raises(
        ConfigError, match="--task_list: no task nope in lm-evaluation-harness or in --include_path"
    ):
        evaluate_main([*flags, "--task_list", "tiny_choice,nope"])
    with pytest.raises(ConfigError, match="--results_path .*: the folder .* does not exist"):
        evaluate_main([*flags, "--results_path", str(tmp_path / "missing" / "results.json")])
    with pytest.raises(ConfigError, match="--overlapping-eval 65: give 1 to the sequence length 64"):
        evaluate_main([*flags, "--overlapping-eval", "65"])


@pytest.mark.slow
def test_tensor_parallel_results_equal_one_process(one_process_results, checkpoint, task_folder, tmp_path):
    results = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        str(REPO_ROOT / "tasks" / "eval_harness" / "evaluate.py"),
        *harness_flags(checkpoint[0], task_folder, results), "--tensor-model-parallel-size", "2",
    ]  # fmt: skip
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "tensor-parallel size 2" in completed.stdout + completed.stderr
    two_results = json.loads(results.read_text())
    assert generated(two_results) == generated(one_process_results)
    two, one = two_results["results"], one_process_results["results"]
    assert set(two) == set(one)
    for task, metrics in one.items():
        for name, value in metrics.items():
            if isinstance(value, float):
                assert two[task][name] == pytest.approx(value, rel=1e-4), (task, name)
