"""Does a pretrained body carry task signal? Linear probes and latent statistics, before any fine-tuning.

For each model (random initialisation and pretrained checkpoints), the frozen body turns every
example into three feature vectors: the byte features the latents read (mean over the example's
bytes), the latents after encoder cross-attention, and the latents after the processor (means over
the latents that hold the example's text). A logistic regression on each (scikit-learn, C picked by
5-fold cross-validation on the training labels) says how much of the task is linearly readable at
that height; TF-IDF of character 1-5-grams on the same labels is the reference. Beside it, how much
the processor's latents differ between inputs: mean cosine similarity of two examples' pooled
latents (1 = every input looks the same: collapse) and the effective rank of the pooled features.

    python benchmarks/transfer_probe.py --glue-dir ../shared/data/glue --task sst2 --labels 1000 \\
        --checkpoints runs/imdb_w256/checkpoint-0001000,runs/imdb_w256 --out docs/transfer_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from perceiver_lm.config import MultiTaskConfig, TaskSpec, get_preset
from perceiver_lm.model import PerceiverClassifier, PerceiverLM
from tasks.finetune.data import eval_loader, load_split, subset_split
from tasks.glue.tasks import TASKS

LEVELS = ("bytes", "cross", "latents")


@torch.no_grad()
def features(model: PerceiverClassifier, split, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Pooled features per example at each level of the frozen body, in the split's order."""
    model.eval()
    encoder = model.encoder
    captured: dict[str, torch.Tensor] = {}
    hook = encoder.cross.register_forward_hook(lambda _m, _i, out: captured.__setitem__("cross", out.hidden))
    out: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    positions = []
    try:
        for batch in eval_loader(split, 0, batch_size):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            real = mask.float()[..., None]  # [B, L, 1]
            byte_features = encoder.embed(ids, mask)  # [B, L, D]
            out["bytes"].append(((byte_features * real).sum(1) / real.sum(1)).float().numpy())
            encoded = encoder(ids, mask)
            keep = (
                torch.ones(encoded.hidden.shape[:2]) if encoded.latent_mask is None else encoded.latent_mask.float()
            )[..., None]  # [B, N, 1]
            for level, hidden in (("cross", captured["cross"]), ("latents", encoded.hidden)):
                out[level].append(((hidden * keep).sum(1) / keep.sum(1)).float().numpy())
            positions.append(batch["position"].numpy())
    finally:
        hook.remove()
    order = np.concatenate(positions).argsort()
    return {level: np.concatenate(chunks)[order] for level, chunks in out.items()}


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> dict[str, float]:
    """Dev accuracy of a standardised logistic regression, C chosen by 5-fold CV on the training set."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=5, max_iter=2000))
    classifier.fit(train_x, train_y)
    return {"accuracy": 100.0 * float((classifier.predict(dev_x) == dev_y).mean())}


def latent_statistics(x: np.ndarray) -> dict[str, float]:
    """Collapse indicators of pooled features [n, D]: mean pairwise cosine, effective rank, relative spread."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    n = len(x)
    cosine = float((unit.sum(0) @ unit.sum(0) - n) / (n * (n - 1)))
    centred = x - x.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    p = singular / singular.sum()
    effective_rank = float(np.exp(-(p * np.log(p.clip(1e-30))).sum()))
    spread = float((centred**2).sum(1).mean() / (x**2).sum(1).mean())
    return {"mean_cosine": cosine, "effective_rank": effective_rank, "relative_variance": spread}


def tfidf_probe(train_texts: list[str], train_y: np.ndarray, dev_texts: list[str], dev_y: np.ndarray) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=1)
    classifier = LogisticRegression(C=4.0, max_iter=2000).fit(vectorizer.fit_transform(train_texts), train_y)
    return 100.0 * float((classifier.predict(vectorizer.transform(dev_texts)) == dev_y).mean())


def texts_of(split) -> list[str]:
    """The examples' text back from their byte ids (specials dropped), for the TF-IDF reference."""
    from perceiver_lm.tokenizer import decode

    return [decode(ids) for ids in split.ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--task", default="sst2", help="a classification task (probes are logistic regressions)")
    parser.add_argument("--labels", default="1000", help="comma-separated training-set sizes (seeded subsets)")
    parser.add_argument("--checkpoints", default="", help="comma-separated pretrained MLM checkpoints or run folders")
    parser.add_argument("--preset", default="small", help="shape of the randomly initialised body")
    parser.add_argument("--seeds", default="0", help="seeds of the random body and of the label subsets")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default="runs/transfer_probe.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    task = TASKS[args.task]
    if task.is_regression:
        parser.error(f"--task {args.task}: probes are classifiers; pick a classification task")
    sizes = [int(n) for n in args.labels.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    full_train = load_split(task, "train", args.glue_dir, args.max_length)
    dev = load_split(task, task.dev[0][0], args.glue_dir, args.max_length)
    dev_y = np.array(dev.labels, dtype=int)
    heads = MultiTaskConfig((TaskSpec(task.name, task.num_outputs),), 768)
    models = [(f"random (seed {s})", s, None) for s in seeds] + [
        (path, 0, path) for path in args.checkpoints.split(",") if path
    ]
    results = []
    for seed in seeds:
        for n in sizes:
            train = subset_split(full_train, n, seed)
            results.append(
                {
                    "model": "tfidf char 1-5",
                    "labels": n,
                    "seed": seed,
                    "probe": {"text": tfidf_probe(texts_of(train), np.array(train.labels, int), texts_of(dev), dev_y)},
                }
            )
    for name, seed, path in models:
        torch.manual_seed(seed)
        if path is None:
            model = PerceiverClassifier(get_preset(args.preset), heads)
        else:
            model = PerceiverClassifier.from_lm(PerceiverLM.from_pretrained(path), heads)
        started = time.monotonic()
        dev_features = features(model, dev)
        stats = latent_statistics(dev_features["latents"])
        for data_seed in seeds:
            for n in sizes:
                train = subset_split(full_train, n, data_seed)
                train_features = features(model, train)
                y = np.array(train.labels, dtype=int)
                scores = {level: probe(train_features[level], y, dev_features[level], dev_y) for level in LEVELS}
                results.append(
                    {"model": name, "labels": n, "seed": data_seed, "probe": scores, "latent_statistics": stats}
                )
                shown = ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in scores.items())
                print(f"{name}, {n} labels, seed {data_seed}: {shown}; {stats} ({time.monotonic() - started:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
