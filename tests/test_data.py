import os
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver_lm.data import (
    FileBytes,
    MaskedWindows,
    MaskingOptions,
    StreamingWindows,
    builtin_corpus,
    corpus_from_texts,
    load_files,
    load_hf_texts,
    split_corpus,
)
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.tokenizer import NUM_SPECIAL, SEP_ID, bytes_to_ids, decode


def test_files_globs_and_folders_concatenate_with_separators(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"beta")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"secret")
    corpus = load_files([tmp_path])
    assert len(corpus) == len("alpha") + 1 + len("beta") + 1
    ids = corpus.read(0, len(corpus))
    assert ids.tolist() == [*bytes_to_ids(b"alpha"), SEP_ID, *bytes_to_ids(b"beta"), SEP_ID]
    assert corpus.read(3, 5).tolist() == [*bytes_to_ids(b"ha"), SEP_ID, *bytes_to_ids(b"be")]
    by_glob = load_files([str(tmp_path / "**" / "*.txt")])
    assert len(by_glob) == len(corpus)
    assert isinstance(load_files([tmp_path / "a.txt"]).buffers[0], FileBytes)  # read from disk, not loaded


def test_wikiextractor_markup_lines_are_dropped(tmp_path):
    text = (
        '<doc id="1" url="?curid=1" title="A">\nA\n\nAbout A.\n</doc>\n'
        '<doc id="2" url="?curid=2" title="B">\nB\n\nAbout B.\n</doc>\n'
    )
    (tmp_path / "wiki.txt").write_text(text)
    corpus = load_files([tmp_path / "wiki.txt"])
    assert corpus.spans.shape == (2, 3)
    ids = corpus.read(0, len(corpus))
    assert decode(ids) == "A\n\nAbout A.\nB\n\nAbout B.\n"
    assert (ids == SEP_ID).sum() == 2


@pytest.mark.parametrize(
    "spec, message",
    [("missing.txt", "missing.txt: no such file or folder"), ("*.nomatch", "pattern matches no files")],
)
def test_missing_inputs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PerceiverLMError, match=message):
        load_files([spec])


def test_empty_and_too_small_corpus(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(PerceiverLMError, match="corpus is empty"):
        load_files([tmp_path / "empty.txt"])
    (tmp_path / "small.txt").write_text("x" * 100)
    with pytest.raises(PerceiverLMError, match="corpus has 101 bytes, fewer than two 128-byte windows"):
        split_corpus(load_files([tmp_path / "small.txt"]), 128, 0.01)


def test_non_utf8_file_trains_on_bytes_with_a_note(tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("café au lait ".encode("latin-1") * 100)
    corpus = load_files([tmp_path / "latin1.txt"])
    assert "latin1.txt (byte 3) is not valid UTF-8; training on the raw bytes anyway" in capsys.readouterr().err
    assert corpus.read(3, 1).tolist() == [0xE9 + 6]


def test_builtin_corpus_is_real_english():
    corpus = builtin_corpus()
    assert len(corpus) > 300_000
    text = decode(corpus.read(0, 5000))
    assert text.count(" the ") > 10


def test_split_carves_validation_from_the_end():
    corpus = corpus_from_texts(["x" * 10_000], "t")
    train, val = split_corpus(corpus, 100, 0.05)
    # 5 % of 10,001 bytes is below the 8-window minimum, so 800 bytes are held out.
    assert (train.start, train.stop, val.start, val.stop) == (0, 9_201, 9_201, 10_001)


def test_windows_are_deterministic_and_shift_between_epochs():
    corpus = corpus_from_texts([" ".join(f"w{i}" for i in range(3000))], "t")
    train, _ = split_corpus(corpus, 64, 0.01)
    a = MaskedWindows(train, 64, MaskingOptions(), seed=3)
    b = MaskedWindows(train, 64, MaskingOptions(), seed=3)
    assert all((a[i]["input_ids"] == b[i]["input_ids"]).all() for i in range(5))
    assert all((a[i]["positions"] == b[i]["positions"]).all() for i in range(5))
    first = a[0]["input_ids"].copy()
    a.set_epoch(1)
    assert a.shift != 0 or not np.array_equal(a.order[:5], b.order[:5])
    assert not np.array_equal(a[0]["input_ids"], first)
    assert a[0]["input_ids"].shape == (64,)


def test_hf_dataset_from_local_folder_and_streaming(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "part.txt").write_text("\n".join(f"line number {i} of a local text dataset" for i in range(200)))
    texts = list(load_hf_texts(str(folder), None, "train", "text", streaming=False))
    assert texts[3] == "line number 3 of a local text dataset"
    stream = StreamingWindows(lambda: load_hf_texts(str(folder), None, "train", "text", True), 64, MaskingOptions(), 0)
    windows = list(stream.windows())
    assert len(windows) == sum(len(t.encode()) + 1 for t in texts) // 64
    assert decode(windows[0]).startswith("line number 0 of a local text datasetline number 1")
    skipped = StreamingWindows(stream.texts_factory, 64, MaskingOptions(), 0, skip_windows=2)
    assert next(iter(skipped))["input_ids"].shape == (64,)


def test_hf_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(
        PerceiverLMError, match="--dataset nobody/no-such-dataset-xyz: cannot load split 'train'"
    ) as err:
        load_hf_texts("nobody/no-such-dataset-xyz", None, "train", "text", False)
    assert "\n" not in str(err.value)
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "part.txt").write_text("a\nb\n")
    with pytest.raises(PerceiverLMError, match="no column 'body' \\(columns: text\\)"):
        load_hf_texts(str(folder), None, "train", "body", False)


def test_a_stream_splits_by_process_and_worker_into_equal_whole_rounds():
    texts = [f"text {i} " + "abc " * (i % 7) for i in range(300)]
    whole = StreamingWindows(lambda: iter(texts), 32, MaskingOptions(), 0, skip_windows=3)
    everything = [w["input_ids"] for w in whole]
    shards = [list(StreamingWindows(lambda: iter(texts), 32, MaskingOptions(), 0, 3, rank, 3)) for rank in range(3)]
    rounds = len(everything) // 3
    assert [len(s) for s in shards] == [rounds] * 3  # equal: no process waits for another at the end
    for rank, shard in enumerate(shards):  # window i goes to process i % 3, masked as in one process
        for r, window in enumerate(shard):
            assert np.array_equal(window["input_ids"], everything[3 * r + rank])
    # DataLoader workers split a process's share further: process 1 of 3 with 2 workers holds shards 2 and 3 of 6.
    loader = torch.utils.data.DataLoader(
        StreamingWindows(lambda: iter(texts), 32, MaskingOptions(), 0, 3, 1, 3),
        batch_size=None,
        num_workers=2,
    )
    seen = sorted(bytes(w["input_ids"].numpy()) for w in loader)
    expected = sorted(bytes(everything[6 * r + s]) for r in range(len(everything) // 6) for s in (2, 3))
    assert seen == expected


def _two_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_bytes(b"alpha " * 50)
    (folder / "b.txt").write_bytes(b"beta " * 50)
    return folder


def test_a_corpus_is_each_real_file_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _two_files(Path("d"))
    (data / "self").symlink_to(".")  # a loop: d/self/self/... would list every file again and again
    (data / "again.txt").symlink_to(data / "a.txt")
    once = len(load_files([data / "a.txt", data / "b.txt"]))
    assert len(load_files([str(data / "**")])) == once
    assert len(load_files([data])) == once
    assert len(load_files([data / "a.txt", data / "b.txt", "./d/a.txt"])) == once
    assert "each file is read once" in capsys.readouterr().err


def test_output_dir_inside_the_data_is_refused(tmp_path):
    data = _two_files(tmp_path / "d")
    (data / "run" / "checkpoint-0000010").mkdir(parents=True)
    (data / "run" / "checkpoint-0000010" / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(PerceiverLMError, match=r"--data .*model.safetensors: lies inside --output-dir .*run"):
        load_files([data], exclude=data / "run")
    assert len(load_files([data], exclude=tmp_path / "elsewhere")) == 300 + 250 + 64 + 3  # 3 files, each + [SEP]


@pytest.mark.parametrize(
    ("make", "kind"),
    [(lambda p: "/dev/zero", "a character device"), (lambda p: (os.mkfifo(p / "fifo"), p / "fifo")[1], "a FIFO")],
)
def test_special_files_are_refused_by_kind(tmp_path, make, kind):
    with pytest.raises(PerceiverLMError, match=f"--data .*: is {kind}"):
        load_files([make(tmp_path)])


def test_more_files_than_descriptors_read_under_a_low_limit(tmp_path):
    import resource

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"{i:05d}.txt").write_bytes(b"doc %d\n" % i)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        corpus = load_files([folder])
        text = decode(corpus.read(0, len(corpus)).tolist())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert text.count("doc ") == 1500 and "doc 1499" in text


def test_a_file_changed_under_a_run_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"some text to train on " * 100)
    corpus = load_files([path])
    windows = MaskedWindows(split_corpus(corpus, 64, 0.1)[0], 64, MaskingOptions(), seed=0)
    windows[0]
    path.write_bytes(b"cut")  # truncated: a memory map would have died with SIGBUS here
    with pytest.raises(PerceiverLMError, match=r"a.txt: changed while being read \(was 2,200 bytes, now 3\)"):
        windows[1]


def test_wikiextractor_documents_across_scan_chunks(tmp_path, monkeypatch):
    import perceiver_lm.data as data_module

    docs = [b"first " * 30, b"second " * 40, b"third " * 20]
    path = tmp_path / "wiki.txt"
    path.write_bytes(b"".join(b'<doc id="%d" title="t">\n' % i + d + b"\n</doc>\n" for i, d in enumerate(docs)))
    whole = load_files([path])
    monkeypatch.setattr(data_module, "SCAN_CHUNK", 50)  # headers and footers fall on every side of a chunk edge
    chunked = load_files([path])
    assert chunked.spans.tolist() == whole.spans.tolist()
    assert len(whole.spans) == 3
    ids = whole.read(0, len(whole))
    texts = bytes(np.where(ids == SEP_ID, 0, ids - NUM_SPECIAL).astype(np.uint8)).split(b"\0")
    assert texts == [d + b"\n" for d in docs] + [b""]
