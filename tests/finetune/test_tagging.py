"""Token classification: a tag per word, decoded by positional queries at the words' last bytes; CoNLL and
JSON Lines files; span metrics; windows; training with a sentence task; predictions with a tag per word."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from perceiver_lm import PerceiverLMError
from perceiver_lm.config import PRESETS, MultiTaskConfig, TaskSpec
from perceiver_lm.inference import classify, tag
from perceiver_lm.model import PerceiverClassifier, PerceiverLM
from perceiver_lm.tokenizer import decode
from perceiver_lm.viz.attention_maps import attention_maps
from tasks.finetune.data import load_split, read_conll
from tasks.finetune.finetune import GlueOptions, finetune
from tasks.finetune.kinds import IGNORED, TokenClassification, encode_words
from tasks.finetune.metrics import compute_tagging
from tasks.finetune.own import OwnTask, build_task
from tasks.finetune.predict import predict_test
from tasks.finetune.tagging_metric import spans

FILLER = ["the", "met", "in", "and", "saw", "a", "friend", "went", "to", "with", "today", "from"]
FIRST = ["Anna", "Boris", "Carla", "Dmitri", "Elena"]
LAST = ["Smith", "Ng", "Okafor", "Larsen"]
CITY = ["Paris", "Oslo", "Lima", "Kyoto"]


def _sentences(n, seed):
    """Sentences of filler words, people (B-PER, and I-PER for a surname) and cities (B-LOC)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        while len(tokens) < rng.integers(4, 12):
            r = rng.random()
            if r < 0.2:
                tokens.append(str(rng.choice(FIRST)))
                tags.append("B-PER")
                if rng.random() < 0.5:
                    tokens.append(str(rng.choice(LAST)))
                    tags.append("I-PER")
            elif r < 0.3:
                tokens.append(str(rng.choice(CITY)))
                tags.append("B-LOC")
            else:
                tokens.append(str(rng.choice(FILLER)))
                tags.append("O")
        out.append({"tokens": tokens, "tags": tags})
    return out


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _write_conll(path, rows, docstart=True):
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for row in rows:
        lines += [f"{w} NNP B-NP {t}" for w, t in zip(row["tokens"], row["tags"], strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# Spans and metrics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),  # IOB2
        (["I-PER", "I-PER", "I-LOC", "B-PER", "I-PER"], [("PER", 0, 1), ("LOC", 2, 2), ("PER", 3, 4)]),  # IOB1
        (["B-ORG", "E-ORG", "S-LOC", "I-LOC", "O"], [("ORG", 0, 1), ("LOC", 2, 2), ("LOC", 3, 3)]),  # BIOES
        (["O", "I-MISC", "B-MISC", "O"], [("MISC", 1, 1), ("MISC", 2, 2)]),  # an I- after O starts a span
        (["NOUN", "NOUN", "VERB"], [("NOUN", 0, 0), ("NOUN", 1, 1), ("VERB", 2, 2)]),  # no prefix: a word each
    ],
)
def test_spans_are_read_from_iob_bio_and_bioes_tags_as_conlleval_reads_them(tags, expected):
    assert spans(tags) == expected


def test_span_scores_count_exact_spans_per_type_and_micro_averaged():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-LOC"]]
    scores = compute_tagging(("span_f1", "span_precision", "span_recall", "token_accuracy"), predicted, gold)
    # Predicted spans: PER(0,0) wrong, LOC right, ORG right, LOC(1,1) wrong: precision 2/4; gold 3: recall 2/3.
    assert scores["span_precision"] == pytest.approx(50.0)
    assert scores["span_recall"] == pytest.approx(200 / 3)
    assert scores["span_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3) * 100)
    assert scores["token_accuracy"] == pytest.approx(100 * 4 / 6)
    assert scores["f1_PER"] == 0.0 and scores["f1_ORG"] == 100.0 and scores["f1_LOC"] == pytest.approx(200 / 3)


# Inputs and the model --------------------------------------------------------------------------------------------


def test_words_are_joined_by_spaces_and_each_word_is_read_at_its_first_byte():
    encoded = encode_words(["Zoë", "ran", "5km"])
    assert decode(encoded.ids[1:-1]) == "Zoë ran 5km"
    # The first and last byte of each word; Zoë is 4 bytes in UTF-8 (ë two).
    assert encoded.reads.tolist() == [[1, 4], [6, 8], [10, 12]]  # each word's first and last byte
    assert [decode(encoded.ids[a : b + 1]) for a, b in encoded.reads] == ["Zoë", "ran", "5km"]


def _tagger(window=None, word_features=False):
    torch.manual_seed(0)
    tasks = MultiTaskConfig(
        (TaskSpec("sent", 2), TaskSpec("pos", 5, per_word=True)), 16, window=window, word_features=word_features
    )
    return PerceiverClassifier(PRESETS["tiny"], tasks).eval()


def test_a_word_read_in_a_window_gets_the_logits_of_that_window_read_alone():
    model = _tagger()
    ids = torch.randint(6, 200, (2, 100))
    mask = torch.ones_like(ids)
    mask[1, 70:] = 0  # the second example ends inside the third window
    words = torch.tensor([[3, 40, 75, 99], [1, 33, 65, 69]])
    out = model(ids, mask, task=1, word_positions=words, window=32, return_attentions=True)
    assert out.logits.shape == (2, 4, 5)
    for b in range(2):
        for q in range(4):
            k, at = divmod(int(words[b, q]), 32)
            piece = slice(32 * k, 32 * (k + 1))
            alone = model(ids[b : b + 1, piece], mask[b : b + 1, piece], task=1, word_positions=torch.tensor([[at]]))
            torch.testing.assert_close(out.logits[b, q], alone.logits[0, 0], atol=1e-5, rtol=1e-4)
    weights = out.decoder_attention  # [B, H, Q, K*N]: a word's query reads only its own window's latents
    n = PRESETS["tiny"].num_latents
    assert weights.shape == (2, 4, 4, 4 * n)
    assert torch.all(weights[0, :, 0, n:] == 0) and torch.allclose(weights[0, :, 0, :n].sum(-1), torch.ones(4))


def test_a_word_is_read_at_its_last_byte_with_the_features_of_both_ends_also_across_a_window_start():
    model = _tagger(word_features=True)
    ids = torch.randint(6, 200, (1, 90))
    # Words as (first, last) bytes; the third starts in window 0 and ends in window 1 (windows of 32 bytes).
    words = torch.tensor([[[1, 5], [7, 12], [29, 35], [60, 70]]])
    out = model(ids, task=1, word_positions=words, window=32).logits  # [1, 4, 5]
    for q, (first, last) in enumerate(words[0].tolist()):
        k = last // 32
        piece = ids[:, 32 * k : 32 * (k + 1)]
        local = torch.tensor([[[max(first - 32 * k, 0), last - 32 * k]]])  # cut by the window: read from its start
        alone = model(piece, task=1, word_positions=local).logits
        torch.testing.assert_close(out[0, q], alone[0, 0], atol=1e-5, rtol=1e-4)
    # The features of the first byte count: another first byte, another output.
    moved = model(ids, task=1, word_positions=torch.tensor([[[2, 5]]])).logits
    assert not torch.allclose(moved[0, 0], model(ids, task=1, word_positions=words[:, :1]).logits[0, 0])


def test_a_per_word_task_needs_word_positions_and_a_sentence_task_refuses_them():
    model = _tagger()
    ids = torch.randint(6, 200, (1, 20))
    with pytest.raises(PerceiverLMError, match="task pos needs word_positions"):
        model(ids, task=1)
    with pytest.raises(PerceiverLMError, match="task sent is read by its task query"):
        model(ids, task=0, word_positions=torch.tensor([[1]]))


def test_a_tagger_starts_from_the_pretrained_positional_query_decoder_and_saves_round_trip(tmp_path):
    lm = PerceiverLM(PRESETS["tiny"])
    tasks = MultiTaskConfig((TaskSpec("pos", 5, per_word=True),), head_hidden=16)
    model = PerceiverClassifier.from_lm(lm, tasks)
    for name, value in lm.decoder.state_dict().items():
        assert torch.equal(model.decoder.words.state_dict()[name], value), name
    assert model.decoder.queries is None and model.decoder.cross is None  # no sentence task: no task query
    model.save_pretrained(tmp_path / "m")
    loaded = PerceiverClassifier.from_pretrained(tmp_path / "m").eval()
    assert loaded.tasks.tasks[0].per_word
    ids, words = torch.randint(6, 200, (1, 30)), torch.tensor([[1, 7, 20]])
    torch.testing.assert_close(
        loaded(ids, task=0, word_positions=words).logits, model.eval()(ids, task=0, word_positions=words).logits
    )


def test_a_sentence_task_model_keeps_the_state_dict_it_had_before_per_word_tasks():
    model = PerceiverClassifier(PRESETS["tiny"], MultiTaskConfig((TaskSpec("a", 2), TaskSpec("b", 3)), 16))
    decoder = sorted({k.split(".")[1] for k in model.state_dict() if k.startswith("decoder.")})
    assert decoder == ["cross", "heads", "queries"]
    assert model.state_dict()["decoder.queries.embedding.weight"].shape[0] == 2
    assert "per_word" not in json.dumps(model.tasks.to_dict())


# Files ---------------------------------------------------------------------------------------------------------


def test_conll_files_give_one_sentence_per_block_and_skip_docstart(tmp_path):
    rows = _sentences(5, 0)
    columns = read_conll(_write_conll(tmp_path / "a.conll", rows))
    assert columns["tokens"] == [r["tokens"] for r in rows] and columns["tags"] == [r["tags"] for r in rows]
    (tmp_path / "u.conllu").write_text(
        "# text = I can't.\n"
        "1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_\n"
        "2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "2\tca\tcan\tAUX\tMD\t_\t0\troot\t_\t_\n"
        "3\tn't\tnot\tPART\tRB\t_\t2\tadvmod\t_\t_\n"
        "3.1\tx\tx\tX\tX\t_\t_\t_\t_\t_\n"
        "4\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_\n\n"
    )
    universal = read_conll(str(tmp_path / "u.conllu"))
    assert universal["tokens"] == [["I", "ca", "n't", "."]] and universal["tags"] == [["PRON", "AUX", "PART", "PUNCT"]]
    (tmp_path / "tabs.conll").write_text("New York\tNNP\tB-LOC\r\nis\tVBZ\tO\r\n\r\n")  # tabs: a word may hold spaces
    assert read_conll(str(tmp_path / "tabs.conll")) == {"tokens": [["New York", "is"]], "tags": [["B-LOC", "O"]]}
    (tmp_path / "words.conll").write_text("-DOCSTART-\n\nEU\nrejects\n\nPeter\n")  # a test file: words alone
    assert read_conll(str(tmp_path / "words.conll"), untagged=True) == {"tokens": [["EU", "rejects"], ["Peter"]]}
    (tmp_path / "bad.conll").write_text("EU B-ORG\nrejects\n")
    with pytest.raises(PerceiverLMError, match=r"bad.conll: line 2: expected a word and its tag, got 'rejects'"):
        read_conll(str(tmp_path / "bad.conll"))


def test_a_row_with_more_tags_than_words_or_an_empty_word_is_refused_naming_the_row(tmp_path):
    rows = _sentences(20, 0)
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    bad = [dict(r) for r in rows[:3]]
    bad[1] = {"tokens": bad[1]["tokens"], "tags": [*bad[1]["tags"], "O"]}
    dev = _write_jsonl(tmp_path / "dev.jsonl", bad)
    task = build_task(OwnTask(train_file=train, validation_file=dev, type="token-classification", name="ner"))
    assert task.labels == ("B-LOC", "B-PER", "I-PER", "O") and task.metrics[0] == "span_f1"
    n = len(rows[1]["tokens"])
    with pytest.raises(PerceiverLMError, match=rf"dev.jsonl: row 2, column 'tags': {n} words but {n + 1} tags"):
        load_split(task, "dev", None, 128)
    _write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["a", ""], "tags": ["O", "O"]}])
    with pytest.raises(PerceiverLMError, match=r"dev.jsonl: row 1, column 'tokens': word 2 is empty"):
        load_split(task, "dev", None, 128)
    _write_jsonl(tmp_path / "dev.jsonl", [{"tokens": "a b", "tags": ["O", "O"]}])
    expected = r"row 1, column 'tags': tags need a list of words in the text column \(it holds a text"
    with pytest.raises(PerceiverLMError, match=expected):
        load_split(task, "dev", None, 128)


def test_a_sentence_longer_than_the_window_is_not_cut_every_word_keeps_its_tag(tmp_path):
    long = {"tokens": [f"w{i}" for i in range(80)], "tags": ["O"] * 80}
    train = _write_jsonl(tmp_path / "train.jsonl", [long, *_sentences(10, 0)])
    task = build_task(OwnTask(train_file=train, validation_file=train, type="token-classification"))
    split = load_split(task, "train", None, 128)
    assert len(split.ids[0]) > 128 and len(split.labels[0]) == len(split.reads[0]) == 80
    batch_kind = TokenClassification()
    targets = batch_kind.batch_targets([split.labels[1], split.labels[0]])
    assert targets.shape == (2, 80) and (targets[0, len(split.labels[1]) :] == IGNORED).all()


# Training, evaluation and prediction ------------------------------------------------------------------------------


def test_a_conll_ner_file_trains_evaluates_and_predicts_a_tag_per_word_from_the_cli(tmp_path):
    train = _write_conll(tmp_path / "ner_train.conll", _sentences(600, 0))
    dev = _write_jsonl(tmp_path / "ner_dev.jsonl", _sentences(100, 1))
    test_rows = _sentences(12, 2)
    test = tmp_path / "ner_test.conll"  # words alone, a word a line
    test.write_text("\n\n".join("\n".join(r["tokens"]) for r in test_rows) + "\n")
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}

    def cli(*args, rc=0):
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert done.returncode == rc, done.stderr[-2000:]
        return done.stdout

    cli(
        "finetune", "train", "--train-file", train, "--validation-file", dev, "--test-file", str(test),
        "--task-type", "token-classification", "--preset", "tiny", "--max-steps", "300", "--eval-every", "150",
        "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "10", "--head-hidden", "32",
        "--output-dir", str(tmp_path / "run"),
    )  # fmt: skip
    best = json.loads((tmp_path / "run" / "dev_metrics.json").read_text())["best"]["ner"]["scores"]["dev"]
    assert best["span_f1"] > 85.0 and best["token_accuracy"] > 92.0, best  # from random init, ~5 s
    assert {"f1_PER", "f1_LOC"} <= set(best)
    assert "span_f1" in cli("finetune", "eval", str(tmp_path / "run" / "best"), "--label-column", "tags")
    cli("finetune", "predict", str(tmp_path / "run" / "best"), "--out", str(tmp_path / "pred"))
    records = [json.loads(line) for line in (tmp_path / "pred" / "ner.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in records] == [r["tokens"] for r in test_rows]
    right = total = 0
    for record, row in zip(records, test_rows, strict=True):
        assert len(record["tags"]) == len(row["tokens"]) and set(record["tags"]) <= {"B-LOC", "B-PER", "I-PER", "O"}
        assert [(s["type"], s["start"], s["end"] - 1) for s in record["spans"]] == spans(record["tags"])
        assert all(s["text"] == " ".join(row["tokens"][s["start"] : s["end"]]) for s in record["spans"])
        right += sum(p == g for p, g in zip(record["tags"], row["tags"], strict=True))
        total += len(row["tags"])
    assert right / total > 0.9
    # From Python: the same tags for the same words.
    model = PerceiverClassifier.from_pretrained(tmp_path / "run" / "best")
    assert tag(model, [r["tokens"] for r in test_rows]) == [r["tags"] for r in records]
    with pytest.raises(PerceiverLMError, match="task ner tags words \\(use tag\\)"):
        classify(model, ["a text"], task="ner")
    # Which latents a word's query reads, and which bytes those latents read.
    maps = attention_maps(model, ["Anna met Boris in Oslo"], query=("ner", 4))[0]
    assert maps.query == "task ner, word 4 ('Oslo')"
    assert maps.decoder.shape == (4, maps.encoder.shape[1]) and np.allclose(maps.decoder.sum(-1), 1.0, atol=1e-3)
    shown = cli("attention", str(tmp_path / "run" / "best"), "Anna met Boris in Oslo", "--query", "ner:4")
    assert "word 4 ('Oslo')" in shown
    with pytest.raises(PerceiverLMError, match="the text has 5 word"):
        attention_maps(model, ["Anna met Boris in Oslo"], query=("ner", 5))
    blocks = (tmp_path / "pred" / "ner.conll").read_text().strip("\n").split("\n\n")
    assert len(blocks) == 12
    assert [line.split("\t") for line in blocks[0].splitlines()] == [
        [w, t] for w, t in zip(records[0]["tokens"], records[0]["tags"], strict=True)
    ]


def test_a_tagging_task_and_a_sentence_task_train_together(tmp_path):
    rows = _sentences(400, 0)
    _write_jsonl(tmp_path / "tags_train.jsonl", rows)
    _write_jsonl(tmp_path / "tags_dev.jsonl", _sentences(60, 1))
    # The sentence task: does the sentence name a city?
    as_text = [{"text": " ".join(r["tokens"]), "label": "city" if "B-LOC" in r["tags"] else "none"} for r in rows]
    _write_jsonl(tmp_path / "cities_train.jsonl", as_text)
    (tmp_path / "tasks.toml").write_text(
        '[[task]]\nname = "tags"\ntype = "token-classification"\ntrain_file = "tags_train.jsonl"\n'
        'validation_file = "tags_dev.jsonl"\n\n'
        '[[task]]\nname = "cities"\ntrain_file = "cities_train.jsonl"\nvalidation_file = "cities_train.jsonl"\n'
    )
    options = GlueOptions(
        task_file=str(tmp_path / "tasks.toml"), preset="tiny", max_steps=360, eval_every=180, batch_size=16,
        lr=2e-3, warmup_steps=10, head_hidden=32, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = finetune(options)
    assert result.best["tags"]["scores"]["dev"]["token_accuracy"] > 85.0, result.best
    assert result.best["cities"]["scores"]["dev"]["accuracy"] > 70.0, result.best
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert [t.per_word for t in model.tasks.tasks] == [True, False]
    # From Python: a label name per text, a tag name per word.
    labels = classify(model, [r["text"] for r in as_text[:100]])
    assert set(labels) <= {"city", "none"} and sum(p == r["label"] for p, r in zip(labels, as_text, strict=False)) > 70
    tags = tag(model, [r["tokens"] for r in rows[:20]], task="tags")
    assert [len(t) for t in tags] == [len(r["tokens"]) for r in rows[:20]]


def test_a_dataset_whose_tags_are_a_sequence_of_class_labels_is_read_by_their_names(tmp_path):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    folder = tmp_path / "ner"
    folder.mkdir()
    for split, rows in (("train", _sentences(40, 0)), ("validation", _sentences(10, 1))):
        ids = [[names.index(t) for t in r["tags"]] for r in rows]
        data = datasets.Dataset.from_dict({"tokens": [r["tokens"] for r in rows], "ner_tags": ids}, features=features)
        data.to_parquet(str(folder / f"{split}.parquet"))
    own = OwnTask(dataset=str(folder), label_column="ner_tags", type="token-classification", name="ner")
    task = build_task(own)
    assert task.labels == tuple(names)  # the dataset's class names, in its order
    split = load_split(task, "dev", None, 128)
    rows = _sentences(10, 1)
    assert [[task.labels[i] for i in y] for y in split.labels] == [r["tags"] for r in rows]
    assert list(split.words) == [tuple(r["tokens"]) for r in rows]


def _as_text(row):
    """A sentence as a text ending in a full stop, its entities as character spans."""
    text, found = "", []
    for word, name in zip(row["tokens"], row["tags"], strict=True):
        start = len(text) + (1 if text else 0)
        text += (" " if text else "") + word
        if name.startswith("B-"):
            found.append({"start": start, "end": start + len(word), "label": name[2:]})
        elif name.startswith("I-"):
            found[-1]["end"] = start + len(word)
    return {"text": text + ".", "entities": found}


def test_a_text_with_character_spans_trains_as_iob2_tags_of_its_words_and_predicts_spans_back(tmp_path):
    rows = [_as_text(r) for r in _sentences(400, 0)]
    train = _write_jsonl(tmp_path / "ents_train.jsonl", rows)
    dev = _write_jsonl(tmp_path / "ents_dev.jsonl", [_as_text(r) for r in _sentences(60, 1)])
    test_rows = [_as_text(r) for r in _sentences(8, 2)]
    test = _write_jsonl(tmp_path / "ents_test.jsonl", [{"text": r["text"]} for r in test_rows])
    own = OwnTask(train_file=train, validation_file=dev, test_file=test, type="token-classification",
                  text_column="text", label_column="entities", name="ents")  # fmt: skip
    task = build_task(own)
    assert task.labels == ("B-LOC", "B-PER", "I-LOC", "I-PER", "O")  # B- and I- of every type the spans name
    split = load_split(task, "dev", None, 128)
    first = _sentences(60, 1)[0]
    assert list(split.words[0]) == [*first["tokens"], "."]  # the text's words, the full stop one of them
    assert [task.labels[i] for i in split.labels[0]] == [*first["tags"], "O"]
    options = GlueOptions(train_file=train, validation_file=dev, test_file=test, task_type="token-classification",
                          text_column="text", label_column="entities", task_name="ents", preset="tiny", max_steps=240,
                          eval_every=120, batch_size=16, lr=2e-3, warmup_steps=10, head_hidden=32,
                          output_dir=str(tmp_path / "run"))  # fmt: skip
    result = finetune(options)
    assert result.best["ents"]["scores"]["dev"]["span_f1"] > 70.0, result.best
    predict_test(result.best_model, None, tmp_path / "pred")
    records = [json.loads(line) for line in (tmp_path / "pred" / "ents.jsonl").read_text().splitlines()]
    for record, row in zip(records, test_rows, strict=True):
        assert record["text"] == row["text"]
        for span in record["spans"]:  # the characters of the words a span covers
            assert row["text"][span["start_char"] : span["end_char"]] == span["text"]


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([[0, 3, "PER"]], r"span 0-3 PER \('Ann'\) starts or ends inside a word"),
        ([[0, 4, "PER"], [0, 8, "PER"]], r"span 0-8 PER \('Anna met'\) overlaps another span"),
        ([[40, 44, "LOC"]], r"span 40-44 LOC: covers no word of the text"),
        ([{"start": 5, "end": 2, "label": "X"}], r"span 1: expected \{start, end, label\}"),
    ],
)
def test_character_spans_that_cut_words_overlap_or_miss_the_text_are_refused(entities, message):
    kind = TokenClassification()
    encoded = kind.encode(["Anna met Boris"], 128, None, 0)
    both = [[0, 4, "PER"], {"start": 9, "end": 14, "type": "PER"}]  # triples, or dicts (label or type)
    assert kind.row_target(encoded, both, ("B-PER", "O")).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=message):
        kind.row_target(encoded, entities, ("B-PER", "I-PER", "B-LOC", "O"))


def test_a_bad_span_in_a_file_is_one_line_naming_file_row_and_column(tmp_path):
    good, bad = {"start": 0, "end": 4, "label": "PER"}, {"start": 0, "end": 3, "label": "PER"}
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "Anna met Boris", "entities": [good]}] * 3)
    dev = _write_jsonl(tmp_path / "dev.jsonl", [{"text": "Anna met Boris", "entities": [bad]}])
    own = OwnTask(train_file=train, validation_file=dev, type="token-classification", text_column="text",
                  label_column="entities", name="t")  # fmt: skip
    with pytest.raises(PerceiverLMError, match=r"dev.jsonl: row 1, column 'entities': span 0-3 PER \('Ann'\) starts"):
        load_split(build_task(own), "dev", None, 128)


def test_whole_number_tags_in_a_file_are_tag_names_and_a_datasets_tag_ids_need_class_names(tmp_path):
    rows = [{"tokens": ["a", "b", "c"], "tags": [0, 3, 0]}, {"tokens": ["d"], "tags": [1]}]
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    task = build_task(OwnTask(train_file=train, validation_file=train, type="token-classification", name="t"))
    assert task.labels == ("0", "1", "3") and task.metrics == ("token_accuracy",)
    split = load_split(task, "dev", None, 128)
    assert [[task.labels[i] for i in y] for y in split.labels] == [["0", "3", "0"], ["1"]]  # names, not positions
    folder = tmp_path / "ids"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", rows)
    _write_jsonl(folder / "validation.jsonl", rows)
    own = OwnTask(dataset=str(folder), type="token-classification", name="t")
    with pytest.raises(PerceiverLMError, match=r"column 'tags' holds tag ids without class names \(row 1\)"):
        build_task(own)
