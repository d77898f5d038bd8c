"""Integer-token files (``--data.format=ids``): readers, errors, training, sampling, serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_errors import is_documented

import attnkit
from attnkit.cli import main
from attnkit.data import ids as idsdata
from attnkit.errors import AttnkitError
from attnkit.tokenizers import IdsTokenizer, load_tokenizer, tokenizer_from_dict

TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2",
        "--model.context_length=16", "--train.batch_size=8", "--train.eval_batches=2"]
PERIOD = [3, 17, 5, 9, 40, 2, 11]


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def docs_of(path, **kw) -> list[list[int]]:
    return [ids.tolist() for _, ids, _ in idsdata.documents(path, **kw)]


# --- readers -------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_partial_decode(tmp_path) -> None:
    tok = IdsTokenizer(100, ("eos",))
    assert tok.vocab_size == 101 and tok.special_tokens == {"eos": 100}
    assert tok.decode([12, 7, 99]) == "12 7 99" and tok.encode("12 7 99") == [12, 7, 99]
    assert tok.encode("  12\n7\t99 ") == [12, 7, 99]
    # streaming decodes the growing id list: every prefix's text is a prefix of the whole
    ids = [12, 100, 7, 99]
    texts = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert tok.decode(ids, skip_special=False) == "12 <|eos|> 7 99"
    with pytest.raises(AttnkitError, match="not a token id"):
        tok.encode("1 x")
    with pytest.raises(AttnkitError, match="outside the vocabulary of 100"):
        tok.encode("100")  # the end-of-document id is special: text never encodes to it
    tok.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path) == tok == tokenizer_from_dict(tok.to_dict())


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt"])
def test_readers_round_trip(tmp_path, suffix) -> None:
    rows = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 1, 2]], dtype=np.int32)
    path = tmp_path / f"ids{suffix}"
    if suffix == ".npy":
        np.save(path, rows)
    elif suffix == ".npz":
        np.savez(path, rows)
    else:
        path.write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n\n")  # blank: skipped
    assert docs_of(path) == rows.tolist()
    stream, tok = idsdata.read_stream(path)
    assert tok == IdsTokenizer(10, ("eos",))  # max id 9 + 1, then the end-of-document id
    assert stream.tolist() == [1, 2, 3, 4, 10, 5, 6, 7, 8, 10, 9, 0, 1, 2]


def test_separator_and_folders(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.array([[1, 2], [3, 4]]))
    (tmp_path / "b.txt").write_text("5 6\n")
    # a declared separator joins rows, lines and files, and is a plain id of the vocabulary
    stream, tok = idsdata.read_stream(tmp_path, separator_id=0)
    assert stream.tolist() == [1, 2, 0, 3, 4, 0, 5, 6] and tok == IdsTokenizer(7)
    # a 1-D stream with a declared separator is taken as it is: its separators end documents
    flat = tmp_path / "flat" / "s.npy"
    flat.parent.mkdir()
    np.save(flat, np.array([4, 4, 0, 5, 0, 6], dtype=np.uint16))
    stream, tok = idsdata.read_stream(flat, separator_id=0)
    assert stream.tolist() == [4, 4, 0, 5, 0, 6] and tok.vocab_size == 7
    stream, tok = idsdata.read_stream(flat, vocab_size=50)  # declared vocabulary, eos after it
    assert tok.vocab_size == 51 and stream.tolist() == [4, 4, 0, 5, 0, 6]


def test_npy_is_memory_mapped_not_copied(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.arange(10_000, dtype=np.int64) % 97)
    arr = idsdata.read_array(path)
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    (_, doc, _), = idsdata.documents(path)
    assert isinstance(doc, np.memmap)  # the document is the map itself, not a copy
    monkeypatch.setattr(idsdata, "CHUNK_IDS", 1000)
    tok = idsdata.scan(path)
    pieces = list(idsdata.iter_stream(path, tok))
    assert max(p.size for p in pieces) == 1000 and sum(p.size for p in pieces) == 10_000


def test_rows_are_read_in_blocks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(idsdata, "CHUNK_IDS", 8)  # blocks of 2 rows of 3 ids
    rows = np.arange(60).reshape(20, 3) % 13
    rows[17, 2] = 99
    np.save(tmp_path / "r.npy", rows)
    with pytest.raises(AttnkitError, match="id 99 at row 17, column 2 is outside the vocabulary of 50"):
        idsdata.scan(tmp_path / "r.npy", vocab_size=50)
    stream, tok = idsdata.read_stream(tmp_path / "r.npy")
    eos = tok.special_tokens["eos"]
    assert eos == 100 and stream.tolist() == sum(([eos] + r for r in rows.tolist()), [])[1:]


# --- errors through the CLI: exit 2, one line, nothing written -----------------------------

def _bad_files(tmp_path: Path) -> list[tuple[Path, list[str], str]]:
    big = np.zeros((5, 20), dtype=np.int64)
    big[3, 12] = 70000
    np.save(tmp_path / "ids.npy", big)
    np.save(tmp_path / "neg.npy", np.array([1, 2, -4, 3]))
    np.save(tmp_path / "float.npy", np.array([1.0, 2.5]))
    (tmp_path / "words.txt").write_text("1 2 3\n4 five 6\n")
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    return [
        (tmp_path / "ids.npy", ["--data.vocab_size=50000"],
         "ids.npy: id 70000 at row 3, column 12 is outside the vocabulary of 50000 "
         "(raise --data.vocab_size)"),
        (tmp_path / "neg.npy", [], "neg.npy: id -4 at position 2 is negative"),
        (tmp_path / "float.npy", [], "float.npy: holds float64 values, not integer ids"),
        (tmp_path / "words.txt", [], "words.txt: 'five' at line 2, word 2 is not an integer id"),
        (tmp_path / "broken.npy", [], "broken.npy: cannot read it as a .npy array"),
        (tmp_path / "missing.npy", [], "missing.npy: no such file or folder"),
    ]


def test_bad_id_files_fail_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    for path, extra, message in _bad_files(tmp_path):
        out_dir = tmp_path / f"run-{path.stem}"
        rc, _, err = cli(capsys, "train", *TINY, "--data.format=ids", f"--data.path={path}", *extra,
                         "--train.steps=1", "--no-samples", "--out", out_dir)
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and message in err, err
        assert is_documented(err.strip()), err  # docs/errors.md lists it
        assert not out_dir.exists()
    assert not any((tmp_path / "cache").rglob("*.bin"))


# --- train, sample, inspect, serve ---------------------------------------------------------

@pytest.fixture(scope="module")
def ids_run(tmp_path_factory) -> Path:
    """A tiny run trained on a periodic id stream."""
    root = tmp_path_factory.mktemp("ids")
    np.save(root / "period.npy", np.tile(np.array(PERIOD, dtype=np.int32), 600))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        rc = main(["train", *TINY, "--data.format=ids", f"--data.path={root / 'period.npy'}",
                   "--train.steps=80", "--train.eval_every=40", "--train.lr=3e-3",
                   "--no-samples", "--out", str(root / "run")])
    assert rc == 0
    return root / "run"


def test_train_learns_a_periodic_stream(ids_run) -> None:
    metrics = [json.loads(line) for line in (ids_run / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert val[-1] < 0.5 * np.log(42) and val[-1] < val[0]  # vocab 41 ids + end of document
    assert load_tokenizer(ids_run) == IdsTokenizer(41, ("eos",))
    run = attnkit.load(ids_run, device="cpu")
    assert run.tokenizer.kind == "ids"


def test_sample_prompt_ids(ids_run, capsys) -> None:
    rc, out, err = cli(capsys, "sample", ids_run, "--prompt-ids", "3,17,5", "--max-new-tokens", 11,
                       "--temperature", 0)
    assert rc == 0, err
    ids = [int(w) for w in out.split()]
    assert ids == (PERIOD * 3)[:14]
    rc, _, err = cli(capsys, "sample", ids_run, "--prompt-ids", "3,99")
    assert rc == 2 and "token id 99 is outside the vocabulary of 41" in err
    assert is_documented(err.strip())
    rc, _, err = cli(capsys, "sample", ids_run)  # the default prompt is a newline
    assert rc == 2 and "--prompt-ids 1,2,3" in err and is_documented(err.strip())


def test_inspect_takes_ids_as_text(ids_run, capsys) -> None:
    rc, out, err = cli(capsys, "inspect", ids_run, "--prompt", "3 17 5")
    assert rc == 0, err
    assert "over 3 tokens" in out


def test_serve_completions_over_ids(ids_run) -> None:
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from test_serve import Server

    from attnkit.serve import create_app

    run = attnkit.load(ids_run, device="cpu")
    with Server(create_app(run, "ids", max_tokens_limit=50)) as s:
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "ids", "prompt": "9 40 2",
                                                         "max_tokens": 6, "temperature": 0},
                       timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [int(w) for w in body["choices"][0]["text"].split()] == [11, 3, 17, 5, 9, 40]
        assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 6
        bad = httpx.post(f"{s.url}/v1/completions", json={"model": "ids", "prompt": "9 x"},
                         timeout=60)
        assert bad.status_code == 400 and "not a token id" in bad.text


@pytest.mark.slow
def test_memory_benchmark_runs(tmp_path) -> None:
    """benchmarks/ids_memory.py end to end on a small file (it times nothing here)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ids_memory.py"
    done = subprocess.run([sys.executable, str(script), "--size-mb", "4", "--steps", "2",
                           "--keep", str(tmp_path)], cwd=script.parent, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.strip().splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["1.0", "4.0"]
