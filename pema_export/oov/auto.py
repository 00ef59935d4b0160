"""``--oov auto``, the default: no policy of its own, but a choice of one per corpus, model and target.

From benchmarks/oov_accuracy.py (labelled evaluation sets of five kinds, three seeds) and benchmarks/encoder_oov.py
(docs/oov.md has both tables):
- ``tail`` whenever the vocabulary leaves enough rows outside the corpus for its codebook: the original tokenizer
  and every row, the corpus's exact and the rest compressed, so text the corpus never had reads as in the full
  model. A code byte covers 2 embedding values in fp32/fp16 model files, 4 in int8 ones (oov/tail.py says why).
  An encoder also keeps exact the rows of its language's ENCODER_PRIOR_WORDS most frequent words
  (``--prior-words``; the language is detected from the corpus): its sentence vectors carry every row's error, and
  these words are most of any unseen text. A task whose Task.tail_word_dropout is set (token classification: 0.1)
  trains with word dropout to UNK as a regulariser (oov/tail.py: no unseen word becomes UNK in the bundle);
- otherwise (the corpus uses nearly the whole vocabulary, so almost nothing is pruned either way) the earlier
  rule: a labelled corpus keeps only what it uses (unk) and trains with word dropout to UNK; an encoder gets remap
  unless its bundle is more than REMAP_MAX_GROWTH larger than fallback's, or it cannot serve the task.
"""

from __future__ import annotations

from typing import Callable

from pema_export.rowcodes import CENTROIDS

NAME = "auto"
PREFERRED = "tail"
CLASSIFIER_POLICY = "unk"
CLASSIFIER_DROPOUT = 0.1
CANDIDATES = ("remap", "fallback")  # weighed in this order; the last is taken when the first cannot serve the task
REMAP_MAX_GROWTH = 0.02
# Measured with benchmarks/encoder_oov.py (MiniLM, corpus samples/search_texts.txt, cpu int8; mean cosine to the
# original model on 5 held-out sets): the tail alone 0.9786-0.9862 at 0.64x the full bundle, with the 2,000 words
# 0.9826-0.9884 at 0.66x (an earlier run: with 5,000, 0.9856-0.9896 at 0.70x). A fine-tuned model does not get
# them: on the labelled sets of benchmarks/oov_accuracy.py they scored no better (tail-24+prior-2000 vs tail-24).
ENCODER_PRIOR_WORDS = 2000


def choose(trains: bool, has_unk: bool, refusals: dict[str, object], predict_bytes: Callable[[str], int],
           tail_rows: int, tail_dropout: float = 0.0, dropout_given: float | None = None) -> tuple[str, float, dict]:
    """(policy, its --oov-dropout, the manifest's record of the choice). ``trains``: the corpus fine-tunes the model;
    ``refusals``: each candidate's Refusal for the task (or None); ``predict_bytes``: policy -> predicted bundle
    bytes; ``tail_rows``: the rows a compressed tail would code; ``tail_dropout``: the task's word dropout under the
    tail when the corpus trains it (Task.tail_word_dropout; it needs an UNK token); ``dropout_given``: the user's
    --oov-dropout, which replaces auto's own, and the record says so."""
    if tail_rows >= CENTROIDS and refusals.get(PREFERRED) is None:
        own = tail_dropout if trains and has_unk else 0.0
        dropout, phrase = _dropout(own, dropout_given if trains else None, "as a regulariser (this task's measured default)")
        record = {"requested": NAME, "chosen": PREFERRED, "reason": tail_reason(trains, tail_rows) + (f"; {phrase}" if phrase else "")}
        return PREFERRED, dropout, {**record, "oov_dropout": dropout} if phrase else record
    fewer = f"only {tail_rows} rows lie outside the corpus, too few for a compressed tail ({CENTROIDS} needed); "
    if trains and has_unk:
        dropout, phrase = _dropout(CLASSIFIER_DROPOUT, dropout_given, "")
        return CLASSIFIER_POLICY, dropout, {
            "requested": NAME, "chosen": CLASSIFIER_POLICY, "oov_dropout": dropout,
            "reason": fewer + f"a labelled corpus: only what it uses, {phrase}",
        }
    refusal = refusals[CANDIDATES[0]]
    policy, record = resolve_auto_oov({policy: predict_bytes(policy) for policy in CANDIDATES},
                                      unavailable=refusal.reason if refusal else None)
    return policy, 0.0, {**record, "reason": fewer + record["reason"]}


def tail_reason(trains: bool, tail_rows: int, prior_words: int | None = None, languages: tuple[str, ...] = ()) -> str:
    exact = f"the corpus's {'fine-tuned ' if trains else ''}rows"
    if prior_words:
        exact += f" and those of the {prior_words:,} most frequent {'/'.join(languages)} words (most of any unseen text)"
    return f"{exact} exact, the other {tail_rows:,} compressed: unseen text reads as in the full model (docs/oov.md)"


def _dropout(own: float, given: float | None, why: str) -> tuple[float, str]:
    """(the word dropout training gets, how the reason says it): auto's own rate, or the user's --oov-dropout."""
    if given is None:
        if not own:
            return 0.0, ""
        return own, f"fine-tuned with --oov-dropout {own}" + (f" {why}" if why else "")
    if given == own:
        return given, f"fine-tuned with --oov-dropout {given} (given; auto's own rate too)"
    return given, f"fine-tuned with --oov-dropout {given} (given, in place of auto's {own})"


def resolve_auto_oov(predicted: dict[str, int], unavailable: str | None = None) -> tuple[str, dict]:
    """(policy, record for the manifest) from each candidate's predicted bundle bytes; ``unavailable``: why remap
    cannot serve the task, when it cannot."""
    growth = predicted["remap"] / predicted["fallback"] - 1
    if unavailable is not None:
        policy, reason = "fallback", f"remap is not available for this task ({unavailable})"
    elif predicted["remap"] <= predicted["fallback"] * (1 + REMAP_MAX_GROWTH) + 1e-6:
        policy, reason = "remap", f"remap's bundle is {growth:+.1%} against fallback's (at most {REMAP_MAX_GROWTH:+.0%})"
    else:
        policy, reason = "fallback", (f"remap's bundle would be {growth:+.1%} against fallback's (more than "
                                      f"{REMAP_MAX_GROWTH:+.0%}: the original tokenizer and id table cost too much)")
    return policy, {"requested": NAME, "chosen": policy, "reason": reason, "predicted_bytes": dict(predicted)}


def prior_words(policy: str, trains: bool) -> int | None:
    """Words of the corpus's language whose rows ``auto`` also keeps exact (``--prior-words``), or None."""
    return ENCODER_PRIOR_WORDS if policy == PREFERRED and not trains else None
