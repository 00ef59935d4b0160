"""``--oov auto``, the default: no policy of its own, but a choice of one per corpus, model and target.

From benchmarks/oov_accuracy.py and the encoder table in docs/oov.md:
- a labelled corpus (a model to fine-tune) keeps only what it uses (unk) and trains with word dropout to UNK:
  held-out accuracy 0.6 points under the full vocabulary at 0.50x its bytes (median of 3 seeds), ahead of
  fallback and remap on every seed;
- otherwise (an encoder, exported as pretrained) remap and fallback are weighed by the bundle bytes each would
  make: remap kept sentence vectors closer to the full model's (mean cosine 0.75 vs 0.63 on text unlike the
  corpus) at +0.2% bytes, and is chosen unless its bundle is more than REMAP_MAX_GROWTH larger (the original
  tokenizer it ships is ~17 MB for a 250k vocabulary), or it cannot serve the task.
"""

from __future__ import annotations

from typing import Callable

NAME = "auto"
CLASSIFIER_POLICY = "unk"
CLASSIFIER_DROPOUT = 0.1
CANDIDATES = ("remap", "fallback")  # weighed in this order; the last is taken when the first cannot serve the task
REMAP_MAX_GROWTH = 0.02


def choose(trains: bool, has_unk: bool, refusals: dict[str, object], predict_bytes: Callable[[str], int]) -> tuple[str, float, dict]:
    """(policy, its --oov-dropout, the manifest's record of the choice). ``trains``: the corpus fine-tunes the model;
    ``refusals``: each candidate's Refusal for the task (or None); ``predict_bytes``: policy -> predicted bundle
    bytes."""
    if trains and has_unk:
        return CLASSIFIER_POLICY, CLASSIFIER_DROPOUT, {
            "requested": NAME, "chosen": CLASSIFIER_POLICY, "oov_dropout": CLASSIFIER_DROPOUT,
            "reason": f"a labelled corpus: only what it uses, fine-tuned with --oov-dropout {CLASSIFIER_DROPOUT} "
                      "(the most held-out accuracy per byte measured, docs/oov.md)",
        }
    refusal = refusals[CANDIDATES[0]]
    policy, record = resolve_auto_oov({policy: predict_bytes(policy) for policy in CANDIDATES},
                                      unavailable=refusal.reason if refusal else None)
    return policy, 0.0, record


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
