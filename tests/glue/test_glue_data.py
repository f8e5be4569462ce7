import numpy as np
import pytest
from glue_files import LAYOUTS, same_letter_pairs, write_file, write_task

from conftest import shared_data
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.noise import parse_noise
from perceiver_lm.tokenizer import CLS_ID, SEP_ID, decode, encode, encode_pair
from tasks.finetune.data import Corruption, ProportionalBatches, TaskExamples, encode_example, eval_loader, load_split
from tasks.glue.tasks import TASKS, parse_tasks

TEXT_A = 'He said "yes" — café, naïve 🙂'  # literal quotes and multi-byte UTF-8
TEXT_B = "second ' text"


def _labeled_rows(task):
    values = task.labels or ("0.000", "2.500", "5.000")
    return [(f"{TEXT_A} {i}", TEXT_B if task.hub_text[1:] else "", values[i % len(values)]) for i in range(3)]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_loads_from_its_original_layout(tmp_path, name):
    task = TASKS[name]
    rows = _labeled_rows(task)
    write_task(
        tmp_path,
        task.directory,
        {stem: rows for _, stem in task.dev} | {"train": rows},
        {stem: [(a, b) for a, b, _ in rows] for stem, _ in task.test_files},
    )
    pair = len(task.hub_text) == 2
    for split_name in ["train", *[s for s, _ in task.dev]]:
        split = load_split(task, split_name, tmp_path, 2048)
        assert len(split) == 3 and split.labeled
        for ids, (a, b, _label) in zip(split.ids, rows, strict=True):
            np.testing.assert_array_equal(ids, encode_pair(a, b) if pair else encode(a))
        expected = (
            [float(y) for _, _, y in rows] if task.is_regression else [float(task.labels.index(y)) for _, _, y in rows]
        )
        assert split.labels == expected
    for stem, _ in task.test_files:
        test = load_split(task, stem, tmp_path, 2048)
        assert not test.labeled and test.index == ["0", "1", "2"]


def test_mrpc_byte_order_mark_and_cola_without_header_or_final_newline(tmp_path):
    write_task(tmp_path, "MRPC", {"train": [("a", "b", "1")]}, {})
    assert (tmp_path / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_split(TASKS["mrpc"], "train", tmp_path, 64).labels == [1.0]
    write_task(tmp_path, "CoLA", {"dev": [("x y.", "", "0"), ("z.", "", "1")]}, {})
    assert not (tmp_path / "CoLA" / "dev.tsv").read_text().endswith("\n")
    split = load_split(TASKS["cola"], "dev", tmp_path, 64)
    assert split.labels == [0.0, 1.0] and split.ids[1].tolist() == encode("z.").tolist()


def test_malformed_rows_name_file_and_line_or_are_counted(tmp_path, capsys):
    header, row, _, _ = LAYOUTS["RTE"]
    rows = [
        row("a", "b", "entailment", "0"),
        ["1", "only two"],
        row("c", "d", "maybe", "2"),
        row("e", "f", "not_entailment", "3"),
    ]
    write_file(tmp_path / "RTE" / "train.tsv", header, rows)
    with pytest.raises(PerceiverLMError, match=r"RTE/train.tsv: line 3: expected 4 tab-separated columns, got 2"):
        load_split(TASKS["rte"], "train", tmp_path, 64)
    split = load_split(TASKS["rte"], "train", tmp_path, 64, skip_bad_rows=True)
    assert split.labels == [0.0, 1.0] and split.skipped == 2
    assert "skipped 2 malformed row(s)" in capsys.readouterr().err
    header, row, _, _ = LAYOUTS["STS-B"]
    write_file(tmp_path / "STS-B" / "dev.tsv", header, [row("a", "b", "2.5", "0"), row("a", "b", "high", "1")])
    with pytest.raises(
        PerceiverLMError, match=r"STS-B/dev.tsv: line 3: expected a number \(a regression target\), got 'high'"
    ):
        load_split(TASKS["stsb"], "dev", tmp_path, 64)
    write_file(tmp_path / "SST-2" / "train.tsv", header=["text", "label"], rows=[["a", "1"]])
    with pytest.raises(PerceiverLMError, match=r"SST-2/train.tsv: line 1: header has no column 'sentence'"):
        load_split(TASKS["sst2"], "train", tmp_path, 64)
    with pytest.raises(PerceiverLMError, match=r"no QQP/ folder"):
        load_split(TASKS["qqp"], "train", tmp_path, 64)


def test_truncation_keeps_both_texts_and_the_final_sep():
    single = encode_example("x" * 100, None, 10)
    assert len(single) == 10 and single[0] == CLS_ID and single[-1] == SEP_ID
    pair = encode_example("a" * 100, "b" * 3, 16)
    assert len(pair) == 16 and list(pair).count(SEP_ID) == 2 and pair[-1] == SEP_ID
    assert (pair == ord("b") + 6).sum() == 3 and (pair == ord("a") + 6).sum() == 10  # the long text gives way
    assert encode_example("ab", "cd", 64).tolist() == encode_pair("ab", "cd").tolist()


def test_hub_offline_and_bad_task_names_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PerceiverLMError, match="no --glue-dir given and nyu-mll/glue cannot be loaded"):
        load_split(TASKS["sst2"], "train", None, 64)
    with pytest.raises(PerceiverLMError, match="unknown GLUE task"):
        parse_tasks("sst2,squad")
    assert [t.name for t in parse_tasks("SST-2, sts-b")] == ["sst2", "stsb"] and len(parse_tasks("all")) == 9


def test_proportional_batches_hold_one_task_and_cover_every_example(tmp_path):
    write_task(tmp_path, "SST-2", {"train": [(f"s{i}", "", "1") for i in range(30)]}, {})
    write_task(tmp_path, "RTE", {"train": [(f"r{i}", "x", "entailment") for i in range(90)]}, {})
    splits = [load_split(TASKS["sst2"], "train", tmp_path, 64), load_split(TASKS["rte"], "train", tmp_path, 64)]
    data = TaskExamples(splits, [0, 1])
    sampler = ProportionalBatches(data, batch_size=8, seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 4 + 12
        assert all(len({data[i][2] for i in b}) == 1 for b in batches)  # one task per batch
        assert all(len(b) == 8 for b in batches)  # full batches: the last of a task is filled from its start
        seen = [i for b in batches for i in b]
        assert set(seen) == set(range(120)) and len(seen) - len(set(seen)) == 2 + 6  # every example, a few twice
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    sampler.set_epoch(0)
    assert list(sampler) == epochs[0]


def test_length_buckets_keep_similar_lengths_together_and_every_example_once(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["x" * int(n) for n in rng.integers(1, 200, 3000)]
    write_task(tmp_path, "SST-2", {"train": [(t, "", "1") for t in texts]}, {})
    data = TaskExamples([load_split(TASKS["sst2"], "train", tmp_path, 256)], [0])
    spread = {}
    for by_length in (True, False):
        sampler = ProportionalBatches(data, batch_size=16, seed=1, by_length=by_length)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 188
        assert set(i for b in batches for i in b) == set(range(3000))
        # padding a batch to its longest example: wasted ids per batch, on average
        spread[by_length] = np.mean([data.lengths[b].max() - data.lengths[b].mean() for b in batches])
        sampler.set_epoch(1)
        assert list(sampler) != batches  # reshuffled every epoch, buckets too
    assert spread[True] < 0.1 * spread[False], spread
    # the batches themselves come in random order, not shortest first
    sampler = ProportionalBatches(data, batch_size=16, seed=1)
    maxima = [data.lengths[b].max() for b in sampler]
    assert not all(a <= b for a, b in zip(maxima, maxima[1:], strict=False))


def test_eval_loader_batches_by_length_and_positions_restore_file_order(tmp_path):
    write_task(tmp_path, "SST-2", {"dev": [("y" * n, "", "1") for n in (40, 3, 90, 7, 60, 1)]}, {})
    split = load_split(TASKS["sst2"], "dev", tmp_path, 128)
    batches = list(eval_loader(split, 0, batch_size=2))
    assert [b["position"].tolist() for b in batches] == [[5, 1], [3, 0], [4, 2]]
    assert [b["input_ids"].shape[1] for b in batches] == [5, 42, 92]  # [CLS] text [SEP]


@pytest.mark.data
def test_real_glue_files_load_with_official_row_counts():
    root = shared_data()
    if root is None or not (root / "glue").is_dir():
        pytest.skip("no ../shared/data/glue (set PERCEIVER_LM_DATA)")
    counts = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3668, 408), "stsb": (5749, 1500)}
    for name, (train, dev) in counts.items():
        assert len(load_split(TASKS[name], "train", root / "glue", 2048)) == train
        split = load_split(TASKS[name], "dev", root / "glue", 2048)
        assert len(split) == dev and split.labeled


def test_noise_corrupts_each_example_the_same_way_every_time(tmp_path):
    write_task(tmp_path, "MRPC", {"dev": same_letter_pairs(60, 3)}, {})
    task = TASKS["mrpc"]
    clean = load_split(task, "dev", tmp_path, 128)
    upper = Corruption((parse_noise("uppercase:1"),), seed=0)
    shouted = load_split(task, "dev", tmp_path, 128, corruption=upper)
    assert shouted.source.endswith("with noise uppercase:1") and shouted.labels == clean.labels
    for a, b in zip(clean.ids, shouted.ids, strict=True):
        assert decode(b) == decode(a).upper()  # both texts of the pair, the specials kept
    drops = Corruption((parse_noise("drop:0.3"),), seed=5)
    first, again = (
        load_split(task, "dev", tmp_path, 128, corruption=drops),
        load_split(task, "dev", tmp_path, 128, corruption=drops),
    )
    assert all(np.array_equal(a, b) for a, b in zip(first.ids, again.ids, strict=True))
    other = load_split(task, "dev", tmp_path, 128, corruption=Corruption(drops.noises, seed=6))
    assert any(not np.array_equal(a, b) for a, b in zip(first.ids, other.ids, strict=True))
    kept = sum(len(ids) for ids in first.ids) - 3 * len(first.ids)  # minus [CLS] and two [SEP]
    assert kept == pytest.approx(0.7 * (sum(len(ids) for ids in clean.ids) - 3 * len(clean.ids)), rel=0.08)


def test_every_process_gets_the_same_full_batches_count_under_accelerates_sharding(tmp_path):
    # Accelerate shards a batch sampler over processes round by round and drops a round whose batch is short:
    # with a short last batch per task, processes would lose examples and disagree on the epoch's length.
    from accelerate.data_loader import BatchSamplerShard

    write_task(tmp_path, "SST-2", {"train": [(f"s{i}", "", "1") for i in range(23)]}, {})
    write_task(tmp_path, "RTE", {"train": [(f"r{i}", "x", "entailment") for i in range(17)]}, {})
    splits = [load_split(TASKS["sst2"], "train", tmp_path, 64), load_split(TASKS["rte"], "train", tmp_path, 64)]
    sampler = ProportionalBatches(TaskExamples(splits, [0, 1]), batch_size=4, seed=0)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        shards = [BatchSamplerShard(sampler, num_processes=2, process_index=r, split_batches=False) for r in (0, 1)]
        batches = [list(shard) for shard in shards]
        assert [len(b) for b in batches] == [len(shards[0]), len(shards[1])] == [6, 6]
        assert set(i for rank in batches for b in rank for i in b) == set(range(40))
