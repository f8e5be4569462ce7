"""Tagging metrics as a Hugging Face ``evaluate`` module, loadable offline: token accuracy and exact-span
precision, recall and F1, per entity type and micro-averaged (the conlleval / ``seqeval`` default convention).

Load it by path::

    import evaluate
    from tasks.finetune.metrics import tagging_module_path

    metric = evaluate.load(str(tagging_module_path()))
    metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "O", "O"]])
    # {'token_accuracy': 0.667, 'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'PER': {...}}

Spans are read from IOB1, IOB2 (BIO), IOE and BIOES/BILOU tags alike, as conlleval reads them: a span starts at
B-/S-/U-, or at I-/E-/L- that follows O, an ended span or a span of another type; it ends before O, before a
B-/S-/U-, or before a tag of another type, and after E-/S-/L-/U-. Tags without a prefix other than O are
spans of their own type, one word each; O is outside any span. A span counts when type, start and end match.

evaluate reads this file's import lines to check dependencies, so each names one installed module.
"""

import datasets
import evaluate

_DESCRIPTION = """
Token accuracy, and exact-span precision, recall and F1 per type and micro-averaged over all spans
(conlleval's rules for reading spans from IOB1/IOB2/IOE/BIOES tags; seqeval's default mode).
"""

_CITATION = """
@inproceedings{tjong-kim-sang-de-meulder-2003-introduction,
  title = {Introduction to the {CoNLL}-2003 Shared Task: Language-Independent Named Entity Recognition},
  author = {Tjong Kim Sang, Erik F. and De Meulder, Fien},
  booktitle = {Proceedings of CoNLL-2003},
  year = {2003},
}
"""

_INPUTS_DESCRIPTION = """
Args:
    predictions: a list of tag sequences (lists of tag names), one per sentence.
    references: the gold tag sequences, each as long as its prediction.
Returns: token_accuracy, precision, recall, f1 (fractions, micro-averaged over spans), and per span type a dict
    of precision, recall, f1 and number (gold spans).
"""

BEGIN, INSIDE, END, SINGLE = "B", "I", ("E", "L"), ("S", "U")


def _split(tag: str) -> tuple[str, str]:
    """(prefix, type) of a tag: "B-PER" -> ("B", "PER"), "O" -> ("O", ""), "NOUN" -> ("S", "NOUN")."""
    if tag == "O" or tag == "":
        return "O", ""
    head, dash, rest = tag.partition("-")
    if dash and len(head) == 1 and head in "BIELSU" and rest:
        return head, rest
    return "S", tag  # a tag without a prefix: a one-word span of its own type


def spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """The spans of a tag sequence as (type, first word, last word), in order."""
    out: list[tuple[str, int, int]] = []
    start = None
    previous, previous_type = "O", ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _split(tag)
        ends = start is not None and (
            previous in (*END, *SINGLE) or prefix in ("O", BEGIN, *SINGLE) or kind != previous_type
        )
        if ends:
            out.append((previous_type, start, i - 1))
            start = None
        starts = prefix in (BEGIN, *SINGLE) or (prefix in (INSIDE, *END) and start is None)
        if starts and prefix != "O":
            start = i
        previous, previous_type = prefix, kind
    return out


def score(predictions: list[list[str]], references: list[list[str]]) -> dict:
    """The metrics of tag sequences against gold ones (see the module's docstring)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"tagging_metric: {len(predictions)} predicted sequences for {len(references)} references")
    right = total = 0
    found: dict[str, list[int]] = {}  # type -> [correct, predicted, gold]
    for number, (predicted, gold) in enumerate(zip(predictions, references, strict=True)):
        if len(predicted) != len(gold):
            raise ValueError(f"tagging_metric: sequence {number}: {len(predicted)} tags for {len(gold)} words")
        right += sum(p == g for p, g in zip(predicted, gold, strict=True))
        total += len(gold)
        p_spans, g_spans = set(spans(list(predicted))), set(spans(list(gold)))
        for kind, *_ in p_spans:
            found.setdefault(kind, [0, 0, 0])[1] += 1
        for kind, *_ in g_spans:
            found.setdefault(kind, [0, 0, 0])[2] += 1
        for kind, *_ in p_spans & g_spans:
            found[kind][0] += 1

    def prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
        precision = correct / predicted if predicted else 0.0
        recall = correct / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    precision, recall, f1 = prf(*(sum(c[i] for c in found.values()) for i in range(3)))
    result = {"token_accuracy": right / total if total else 0.0, "precision": precision, "recall": recall, "f1": f1}
    for kind in sorted(found):
        p, r, f = prf(*found[kind])
        result[kind] = {"precision": p, "recall": r, "f1": f, "number": found[kind][2]}
    return result


class TaggingMetric(evaluate.Metric):
    """Token accuracy and exact-span scores of tag sequences."""

    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features({"predictions": tags, "references": tags}),
            reference_urls=["https://www.clips.uantwerpen.be/conll2003/ner/"],
        )

    def _compute(self, predictions, references):
        return score([list(p) for p in predictions], [list(r) for r in references])
