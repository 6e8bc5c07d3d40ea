# Sourced by the example scripts (from the repository root): installs what is missing (nothing when all is
# in place), picks the launcher's rendezvous port, preprocesses the bundled corpus once and defines
# launch_checked (examples_deepspeed/launch_checked.sh), through which every script runs its launcher.
#   MASTER_PORT   the port of the launcher's rendezvous (default: one that is free now)
#   SKIP_INSTALL  1: use the Python environment as it is, e.g. a cluster image with the toolkit installed
source examples_deepspeed/launch_checked.sh
[ "${SKIP_INSTALL:-0}" = 1 ] || bash tools/install.sh
MASTER_PORT=${MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

GPT_DATA_PREFIX=data/processed/kjv
GPT_TOKENIZER=data/tokenizer/gpt2-bpe

# The corpus as GPT's token documents, ${GPT_DATA_PREFIX}_text_document.{bin,idx}, with the bundled BPE.
preprocess_gpt_corpus() {
  if [ ! -f "${GPT_DATA_PREFIX}_text_document.idx" ]; then
    python3 tools/preprocess_data.py --input data/corpus/kjv.jsonl --json-keys text \
      --output-prefix "$GPT_DATA_PREFIX" --tokenizer-type GPT2BPETokenizer \
      --vocab-file "$GPT_TOKENIZER/vocab.json" --merge-file "$GPT_TOKENIZER/merges.txt" --append-eod --workers 2
  fi
}

SENTENCE_DATA_PREFIX=data/processed/kjv_bert
BERT_VOCAB=data/tokenizer/bert-wordpiece/vocab.txt

# The corpus split into sentences (BERT's and T5's data), ${SENTENCE_DATA_PREFIX}_text_sentence.{bin,idx}.
preprocess_sentence_corpus() {
  if [ ! -f "${SENTENCE_DATA_PREFIX}_text_sentence.idx" ]; then
    python3 tools/preprocess_data.py --input data/corpus/kjv.jsonl --json-keys text \
      --output-prefix "$SENTENCE_DATA_PREFIX" --tokenizer-type BertWordPieceLowerCase --vocab-file "$BERT_VOCAB" \
      --split-sentences --workers 2
  fi
}
