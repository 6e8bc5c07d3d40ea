"""Zero-shot evaluation (megatron/evaluation, tasks/main.py): the window arithmetic, WikiText's
detokenizer, LAMBADA's targets, and the metrics against the same metrics computed with ``transformers``
on the HF export of the same random model (GPT-2 and LLaMA-style). The slow test runs ``tasks/main.py``
on a checkpoint that pretrain_gpt.py wrote, with one process and with tensor parallelism 2."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megatron.checkpointing.hf_gpt2 import to_gpt2  # noqa: E402
from megatron.checkpointing.hf_llama import to_llama  # noqa: E402
from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.data.tokenizer import build_tokenizer  # noqa: E402
from megatron.evaluation.detokenizer import wikitext_detokenizer  # noqa: E402
from megatron.evaluation.lambada import accuracy, lambada_sample, lambada_split, read_lambada  # noqa: E402
from megatron.evaluation.scoring import Sample, score_samples  # noqa: E402
from megatron.evaluation.task import add_task_flags, eval_seq_length, run_zeroshot  # noqa: E402
from megatron.evaluation.wikitext import (  # noqa: E402
    lm_windows,
    original_word_count,
    perplexity,
    read_wikitext,
    wikitext_data,
)
from megatron.model import GPTModel  # noqa: E402
from tests.data.corpora import MERGES, VOCAB  # noqa: E402
from tests.launch import (  # noqa: E402
    LLAMA_FLAGS,
    REPO_ROOT,
    child_env,
    free_port,
    run_pretrain,
    tiny_model_flags,
    write_ds_config,
)
from tests.text_generation.conftest import TINY_GPT  # noqa: E402

WIKITEXT = (
    " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : "
    "戦場のヴァルキュリア3 ) "
    ", commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ playing video "
    "game developed by Sega and Media.Vision for the PlayStation Portable . Released in January 2011 in "
    "Japan , it is the third game in the Valkyria series . \n \n = = Gameplay = = \n \n The game 's "
    "battle system , the BliTZ system , is carried over directly from Valkyira Chronicles . During "
    "missions , players select each unit using a top @-@ down perspective of the battlefield map : once a "
    "character is selected , the player moves the character around the battlefield in third @-@ person . "
    'It sold 1 @,@ 000 copies at a price of 3 @.@ 5 thousand yen , a " modest " result for the players \' '
    "studio . \n \n = = = Plot = = = \n \n The story runs parallel to the first game . \n"
)
LAMBADA = [
    "the old man walked to the river every morning , and every morning he fed the ducks . the ducks",
    "she opened the door and called for her dog , but the dog did not come . she called again for the dog",
    "he played the piano all night long , until his fingers hurt from playing the piano",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES, None)


# --- Windows ------------------------------------------------------------------------------------------------


def scored_targets(windows: list[Sample], stride: int) -> list[int]:
    """The absolute index (into the token list) of every target the windows score, in order."""
    indices = []
    for number, window in enumerate(windows):
        start = number * stride
        indices += [start + 1 + i for i in range(window.first_scored, len(window.tokens) - 1)]
    return indices


@pytest.mark.parametrize("num_tokens", [2, 5, 16, 17, 18, 33, 100])
@pytest.mark.parametrize("stride", [1, 3, 8, 16])
def test_windows_score_every_target_once(num_tokens, stride):
    tokens = list(range(num_tokens))
    windows = lm_windows(tokens, seq_length=16, stride=stride)
    assert scored_targets(windows, stride) == list(range(1, num_tokens))
    for number, window in enumerate(windows):
        assert window.tokens == tokens[number * stride : number * stride + 17]
        assert window.num_scored >= 1
        if number > 0:  # an overlapping window scores only targets past the previous window's
            assert window.first_scored == 16 - stride and window.num_scored <= stride


def test_windows_without_overlap_are_consecutive_chunks():
    windows = lm_windows(list(range(40)), seq_length=16, stride=16)
    assert [w.tokens for w in windows] == [list(range(0, 17)), list(range(16, 33)), list(range(32, 40))]
    assert [w.first_scored for w in windows] == [0, 0, 0]


@pytest.mark.parametrize("stride", [0, 17])
def test_windows_reject_a_stride_outside_the_window(stride):
    with pytest.raises(ValueError, match=f"stride {stride}"):
        lm_windows(list(range(40)), seq_length=16, stride=stride)


# --- Detokenizer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, text",
    [
        ("a role @-@ playing game", "a role-playing game"),
        ("sold 1 @,@ 000 copies", "sold 1,000 copies"),
        ("3 @.@ 5 km", "3.5 km"),
        ("Hello , world . Then : this ; that ! Why ? ", "Hello, world. Then: this; that! Why? "),
        ("The game 's system", "The game's system"),
        ("the players ' union", "the players' union"),
        ("released ( in 2011 ) and [ later ] { x }", "released (in 2011) and [later] {x}"),
        ('a " modest " result', 'a "modest" result'),
        (" = = Gameplay = = \n", " == Gameplay ==\n"),
        (" = = = Plot = = = \n \n Text", " === Plot ===\n\nText"),
        (" = = = = Deep = = = = ", " ==== Deep ==== "),
        ("a 40 \N{DEGREE SIGN} angle", "a 40\N{DEGREE SIGN}angle"),
        ("about N people", "about 1 people"),
    ],
)
def test_wikitext_detokenizer(raw, text):
    assert wikitext_detokenizer(raw) == text


def test_original_words_are_counted_at_single_spaces():
    # "=", "Title", "=", "\n", "\n", "Some", "text", ".": the ends stripped, newlines counted as words
    assert original_word_count(" = Title = \n \n Some text . \n") == 8
    assert original_word_count("a b  c") == 4  # Megatron's count: a double space makes an empty word


# --- LAMBADA targets ----------------------------------------------------------------------------------------


def test_lambada_target_is_the_last_token(tokenizer):
    text = "she called again for the dog"
    context, target = lambada_split(text, tokenizer, strict=False)
    assert context + target == tokenizer.tokenize(text) and len(target) == 1


def test_strict_lambada_target_is_the_whole_last_word(tokenizer):
    text = "the dog chased the other dog around the doghouse"
    context, target = lambada_split(text, tokenizer, strict=True)
    assert context == tokenizer.tokenize("the dog chased the other dog around the")
    assert target == tokenizer.tokenize(" doghouse") and len(target) > 1  # several BPE pieces
    context, target = lambada_split("dog bites dog ", tokenizer, strict=True)  # the last occurrence
    assert context == tokenizer.tokenize("dog bites") and target == tokenizer.tokenize(" dog")


def test_lambada_sample_scores_the_target_and_keeps_the_end_of_a_long_passage(tokenizer):
    text = "one two three four five six seven eight nine ten eleven twelve"
    sample = lambada_sample(text, tokenizer, strict=True, seq_length=64)
    assert sample.tokens[sample.first_scored + 1 :] == tokenizer.tokenize(" twelve")
    short = lambada_sample(text, tokenizer, strict=True, seq_length=4)
    assert short.tokens == sample.tokens[-5:] and short.num_scored == sample.num_scored


def test_lambada_file_errors_name_the_line(tokenizer, tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text(json.dumps({"text": LAMBADA[0]}) + "\n" + json.dumps({"passage": "x"}) + "\n")
    with pytest.raises(ValueError, match='line 2: not a JSON object with a "text" field'):
        read_lambada(path, tokenizer, strict=False, seq_length=64)


# --- Scoring, and parity with transformers ------------------------------------------------------------------


class NextIdModel(torch.nn.Module):
    """Logits favouring id + 1 after each id; a padding id (past the vocabulary) scores higher still."""

    def __init__(self, vocab: int, padded: int):
        super().__init__()
        self.vocab, self.padded = vocab, padded
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.one_hot((tokens + 1) % self.vocab, self.padded).float() * 5.0
        logits[..., self.vocab :] = 10.0
        return logits + self.anchor


def test_accuracy_counts_a_passage_right_only_when_every_target_is_the_argmax():
    model = NextIdModel(vocab=50, padded=64)
    samples = [
        Sample([3, 4, 5, 6], first_scored=1),  # 5 and 6 follow: right
        Sample([3, 4, 5, 9], first_scored=1),  # 9 does not follow 5: wrong
        Sample([3, 9, 10], first_scored=1),  # 9 is context only: right
        Sample([7, 8], first_scored=0),  # the shortest of the batch, padded: right
    ]
    scores = score_samples(model, samples, vocab_size=50, pad_id=0, batch_size=3)
    assert [score.correct for score in scores] == [True, False, True, True]
    assert accuracy(scores).num_correct == 3 and accuracy(scores).accuracy == 0.75
    right = -torch.log_softmax(torch.tensor([5.0] + [0.0] * 49), 0)[0].item()
    assert scores[0].loss == pytest.approx(2 * right) and scores[3].loss == pytest.approx(right)


def random_models(kind: str, vocab: int):
    """Our random model (padding rows past the tokenizer's vocabulary) and its HF export."""
    if kind == "gpt2":
        config = dataclasses.replace(TINY_GPT, padded_vocab_size=vocab + 64)
        ours = GPTModel(config, seed=7).eval()
        hf_config, hf_state = to_gpt2(ours.state_dict(), config, vocab)
        hf = transformers.GPT2LMHeadModel(hf_config)
    else:
        config = dataclasses.replace(
            TINY_GPT, padded_vocab_size=vocab + 64, num_key_value_heads=2, learned_position_embeddings=False,
            rotary_position_embeddings=True, swiglu=True, normalization="rmsnorm", add_bias_linear=False,
            untie_embeddings_and_output_weights=True, layernorm_epsilon=1e-6,
        )  # fmt: skip
        ours = GPTModel(config, seed=7).eval()
        hf_config, hf_state = to_llama(ours.state_dict(), config, vocab_size=vocab)
        hf = transformers.LlamaForCausalLM(hf_config)
    hf.load_state_dict(hf_state, strict=True)
    return ours, hf.eval()


@torch.no_grad()
def hf_loss(hf, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
    """With transformers alone: the summed loss of the last ``len(targets)`` predictions of ``inputs`` and
    whether HF's argmax is right at all of them."""
    logits = hf(torch.tensor([inputs])).logits[0, len(inputs) - len(targets) :]
    expected = torch.tensor(targets)
    loss = torch.nn.functional.cross_entropy(logits, expected, reduction="sum").item()
    return loss, bool((logits.argmax(-1) == expected).all())


def hf_scores(hf, samples: list[Sample]) -> list[tuple[float, bool]]:
    """Per sample, one at a time (no padding): its scored targets' loss and correctness by HF."""
    return [hf_loss(hf, sample.tokens[:-1], sample.tokens[sample.first_scored + 1 :]) for sample in samples]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("stride", [64, 16], ids=["no-overlap", "overlap-16"])
def test_wikitext_perplexity_equals_transformers(kind, stride, tokenizer):
    ours, hf = random_models(kind, tokenizer.vocab_size)
    data = wikitext_data(WIKITEXT, tokenizer, seq_length=64, stride=stride)
    assert len(data.samples) >= 3
    result = perplexity(data, score_samples(ours, data.samples, tokenizer.vocab_size, tokenizer.eod, 2))
    hf_loss = sum(loss for loss, _ in hf_scores(hf, data.samples))
    targets = data.num_tokenized_tokens - 1
    assert sum(sample.num_scored for sample in data.samples) == targets
    assert result.avg_loss == pytest.approx(hf_loss / targets, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(hf_loss / targets), rel=1e-5)
    words = len(WIKITEXT.strip().split(" ")) - 1
    assert result.adjusted_ppl == pytest.approx(math.exp(hf_loss / words), rel=1e-5)
    assert result.token_ratio == targets / words


def test_non_overlapping_loss_equals_transformers_on_plain_chunks(tokenizer):
    """Without overlap the windows are the text cut in chunks of 64 targets, each read from scratch."""
    ours, hf = random_models("gpt2", tokenizer.vocab_size)
    tokens = tokenizer.tokenize(wikitext_detokenizer(WIKITEXT))
    data = wikitext_data(WIKITEXT, tokenizer, seq_length=64, stride=64)
    result = perplexity(data, score_samples(ours, data.samples, tokenizer.vocab_size, tokenizer.eod, 4))
    total = 0.0
    for start in range(0, len(tokens) - 1, 64):
        chunk = tokens[start : start + 65]
        total += hf_loss(hf, chunk[:-1], chunk[1:])[0]
    assert result.total_loss == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("strict", [False, True], ids=["last-token", "strict"])
def test_lambada_scores_equal_transformers(kind, strict, tokenizer, tmp_path):
    ours, hf = random_models(kind, tokenizer.vocab_size)
    path = tmp_path / "lambada_test.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in LAMBADA))
    samples = read_lambada(path, tokenizer, strict, seq_length=64)
    # One more passage built to be right: its target is the model's own greedy next token.
    with torch.no_grad():
        context = samples[0].tokens[:-1]
        greedy = ours(torch.tensor([context]))[0, -1, : tokenizer.vocab_size].argmax().item()
    samples.append(Sample([*context, greedy], len(context) - 1))
    scores = score_samples(ours, samples, tokenizer.vocab_size, tokenizer.eod, batch_size=2)
    expected = hf_scores(hf, samples)
    assert [score.correct for score in scores] == [right for _, right in expected]
    assert scores[-1].correct
    for score, (loss, _) in zip(scores, expected, strict=True):
        assert score.loss == pytest.approx(loss, rel=1e-5)
    assert accuracy(scores).num_correct == sum(right for _, right in expected)


def test_read_wikitext_reads_the_raw_file(tokenizer, tmp_path):
    path = tmp_path / "wiki.test.tokens"
    path.write_bytes(WIKITEXT.encode("utf-8"))
    data = read_wikitext(path, tokenizer, seq_length=64, stride=32)
    assert data == wikitext_data(WIKITEXT, tokenizer, seq_length=64, stride=32)
    assert data.num_original_tokens == len(WIKITEXT.strip().split(" "))


# --- tasks/main.py ------------------------------------------------------------------------------------------


def test_the_task_names_the_missing_eval_file():
    args = parse_args(["--task", "LAMBADA", "--load", "ckpt"], add_task_flags)
    with pytest.raises(ConfigError, match=r"--valid-data \(none\): give the one file of LAMBADA"):
        run_zeroshot(args)


def test_the_task_rejects_a_stride_past_the_window():
    args = parse_args(
        ["--task", "WIKITEXT103", "--seq-length", "16", "--overlapping-eval", "32"], add_task_flags
    )
    with pytest.raises(ConfigError, match="--overlapping-eval 32: give 1 to the sequence length 16"):
        eval_seq_length(args, max_positions=64)
    with pytest.raises(ConfigError, match="--seq-length 128: the model has 64 positions"):
        eval_seq_length(parse_args(["--task", "LAMBADA", "--seq-length", "128"], add_task_flags), 64)
    assert eval_seq_length(parse_args(["--task", "LAMBADA"], add_task_flags), 64) == 64


RESULT_PATTERN = re.compile(r"validation results on (\w+) \| (.*)")


def task_metrics(line: str) -> dict[str, float]:
    """The metrics of Megatron's result line, by name."""
    fields = RESULT_PATTERN.search(line).group(2).split("|")
    return {name.strip(): float(value) for name, value in (f.split(":") for f in fields if f.strip())}


def write_eval_files(folder) -> dict[str, str]:
    wiki = folder / "wiki.test.tokens"
    wiki.write_bytes(WIKITEXT.encode("utf-8"))
    lambada = folder / "lambada_test.jsonl"
    lambada.write_text("".join(json.dumps({"text": text}) + "\n" for text in LAMBADA))
    return {"WIKITEXT103": str(wiki), "LAMBADA": str(lambada)}


@pytest.fixture(scope="module")
def checkpoints(gpt_data_prefix, tmp_path_factory):
    """Checkpoints pretrain_gpt.py wrote: a GPT-2 style one and a LLaMA-style one."""
    folder = tmp_path_factory.mktemp("zeroshot")
    ds_config = write_ds_config(folder / "ds.json", 0)
    saved = {}
    for name, extra in (("gpt", []), ("llama", LLAMA_FLAGS)):
        saved[name] = folder / name
        flags = [*tiny_model_flags(gpt_data_prefix), *extra, "--save", str(saved[name])]
        run_pretrain([*flags, "--deepspeed_config", str(ds_config)], launcher="python").check()
    return saved


def run_task(task: str, flags: list[str], nproc: int = 1) -> str:
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(free_port()),
    ]  # fmt: skip
    command = [*launcher, str(REPO_ROOT / "tasks" / "main.py"), "--task", task, *flags]
    # Not the rendezvous variables of this process's own group (the in-process runs' fixture sets them).
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    lines = RESULT_PATTERN.findall(completed.stdout)
    assert len(lines) == 1, completed.stdout[-2000:]  # rank 0 only
    return completed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize(
    "task, task_flags",
    [("WIKITEXT103", ["--overlapping-eval", "8"]), ("LAMBADA", ["--strict-lambada"]), ("LAMBADA", [])],
    ids=["wikitext-overlap-8", "lambada-strict", "lambada"],
)
def test_tasks_main_reports_the_in_process_metrics(
    kind, task, task_flags, checkpoints, single_process_group, tmp_path
):
    files = write_eval_files(tmp_path)
    flags = [
        "--valid-data",
        files[task],
        "--load",
        str(checkpoints[kind]),
        "--micro-batch-size",
        "4",
        *task_flags,
    ]
    output = run_task(task, flags)
    expected = run_zeroshot(parse_args(["--task", task, *flags], add_task_flags))
    assert expected in output
    metrics = task_metrics(expected)
    assert all(math.isfinite(value) for value in metrics.values())
    if task == "WIKITEXT103":
        assert (
            metrics["ppl"] < 8192 and metrics["adjusted ppl"] > metrics["ppl"]
        )  # trained; more tokens than words
    else:
        assert metrics["total examples"] == len(LAMBADA) and 0 <= metrics["avg accuracy"] <= 1


@pytest.mark.slow
def test_tensor_parallel_evaluation_matches_one_process(checkpoints, tmp_path):
    files = write_eval_files(tmp_path)
    flags = [
        "--valid-data",
        files["WIKITEXT103"],
        "--load",
        str(checkpoints["gpt"]),
        "--overlapping-eval",
        "16",
    ]
    one = task_metrics(run_task("WIKITEXT103", flags))
    two = task_metrics(run_task("WIKITEXT103", [*flags, "--tensor-model-parallel-size", "2"], nproc=2))
    assert two == pytest.approx(one, rel=1e-3)
