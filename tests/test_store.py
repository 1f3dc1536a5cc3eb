"""Token stores: what they hold, reopening without reading the corpus, changed files, bitwise
builds whatever the workers or interruptions, and `lmjax prepare`."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmjax.config import DataConfig
from lmjax.data import dataset as dataset_lib
from lmjax.data import prepare
from lmjax.data import sources as src
from lmjax.data import store as store_lib
from lmjax.errors import DataError

DATA_DIR = os.environ["LMJAX_DATA_DIR"]
REPO = Path(__file__).resolve().parents[1]


def data_cfg(tmp_path, **overrides) -> DataConfig:
    return DataConfig(**{"data_dir": DATA_DIR, "cache_dir": str(tmp_path / "cache"), **overrides})


def write_jsonl(path: Path, n: int, start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"text": f"record {i} " + "lorem ipsum dolor " * (i % 13 + 1)}) + "\n")
    return path


def jsonl_corpus(folder: Path, files: int, per_file: int) -> Path:
    """`files` JSONL files of `per_file` records each, numbered on across them."""
    for i in range(files):
        write_jsonl(folder / f"{i:02d}.jsonl", per_file, start=per_file * i)
    return folder


def prepare_args(corpus: Path, tokenizer: str, *extra: str) -> list[str]:
    return ["prepare", f"--config.data.corpus={corpus}", f"--config.data.tokenizer={tokenizer}",
            "--config.data.vocab_size=300", *extra]


def store_files(folder: str) -> dict[str, bytes]:
    """Every shard and the manifest's content less its timings: what must be bitwise equal."""
    out = {}
    for p in sorted(Path(folder, "shards").iterdir()):
        out[p.name] = p.read_bytes()
    manifest = json.loads(Path(folder, "manifest.json").read_text())
    for k in ("build_seconds", "workers"):
        manifest.pop(k)
    out["manifest"] = json.dumps(manifest, sort_keys=True).encode()
    return out


def lmjax(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmjax.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kw)


@pytest.mark.parametrize("kind, vocab_size", [("byte", 0), ("char", 0), ("sentencepiece", 400), ("bpe", 400)])
def test_store_holds_each_document_then_its_end(tmp_path, monkeypatch, kind, vocab_size):
    monkeypatch.setattr(store_lib, "BATCH_DOCS", 3)  # a piece in several batches (one piece: built here)
    text = Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:200_000]
    corpus_dir = tmp_path / "docs"
    docs = [text[i:i + 5000] for i in range(0, len(text), 5000)]
    for i, d in enumerate(docs):
        (corpus_dir / f"{i:03d}.txt").parent.mkdir(exist_ok=True)
        (corpus_dir / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    data = prepare(data_cfg(tmp_path, corpus=str(corpus_dir), tokenizer=kind, vocab_size=vocab_size))
    tok, source = data.tokenizer, data.sources[0]
    corpus = src.find_corpus(str(corpus_dir))
    sides = src.forced_text_sides(corpus, 0.1)
    for split, want in (("train", [d for i, d in enumerate(docs) if not sides[i]]),
                        ("val", [d for i, d in enumerate(docs) if sides[i]])):
        s = getattr(source.store, split)
        ids = np.asarray(s.tokens)
        assert ids.dtype == np.uint16 and s.documents == len(want) and s.bytes == len("".join(want).encode())
        assert np.array_equal(ids[s.doc_ends - 1], np.full(len(want), tok.eod_id))  # each ends with eod
        starts = np.concatenate([[0], s.doc_ends[:-1]])
        assert [tok.decode(ids[a:b - 1]) for a, b in zip(starts, s.doc_ends)] == want
    assert data.val_bytes == source.store.val.bytes and len(data.train) == source.store.manifest["train"]["tokens"]


def test_reopening_reads_no_corpus_byte_and_notices_changes(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "c" / "a.jsonl", 300)
    b = write_jsonl(tmp_path / "c" / "b.jsonl", 300, start=300)
    cfg = data_cfg(tmp_path, corpus=str(tmp_path / "c" / "*.jsonl"), tokenizer="bpe", vocab_size=300)
    first = prepare(cfg)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished store was rebuilt or its corpus read")

    for name in ("documents", "piece_sha256", "_read_bytes", "_open_text_stream"):
        monkeypatch.setattr(src, name, must_not_run)
    monkeypatch.setattr(dataset_lib, "train_tokenizer", must_not_run)
    second = prepare(cfg)
    assert second.cache_dir == first.cache_dir and np.array_equal(np.asarray(second.train), np.asarray(first.train))
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint
    monkeypatch.undo()

    os.utime(b, ns=(time.time_ns(), time.time_ns()))  # touched, same bytes: re-hashed, accepted
    assert prepare(cfg).corpus_fingerprint == first.corpus_fingerprint
    b.write_text(b.read_text().replace("record 300", "record 999"))
    with pytest.raises(DataError, match=rf"corpus file {b} changed since the token store was built; run "
                                        r"`lmjax prepare --rebuild`"):
        prepare(cfg)
    write_jsonl(tmp_path / "c" / "new.jsonl", 5)
    with pytest.raises(DataError, match="corpus file new.jsonl is new since the token store was built"):
        prepare(cfg)
    rebuilt = prepare(cfg, rebuild=True)  # the old tokenizer renamed, the old store left alone
    assert rebuilt.corpus_fingerprint != first.corpus_fingerprint
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.replaced-*"))) == 1
    assert Path(first.cache_dir, "manifest.json").exists() and rebuilt.cache_dir != first.cache_dir
    again = prepare(data_cfg(tmp_path, corpus=cfg.corpus), rebuild=True)  # byte: the same key, set aside
    assert len(list((tmp_path / "cache" / "stores").glob("*.replaced-*"))) == 0
    prepare(data_cfg(tmp_path, corpus=cfg.corpus), rebuild=True)
    assert [p.name.split(".")[0] for p in (tmp_path / "cache" / "stores").glob("*.replaced-*")] == \
        [Path(again.cache_dir).name]


def test_store_is_the_same_whatever_the_workers_and_pieces(tmp_path):
    corpus = src.find_corpus(str(jsonl_corpus(tmp_path / "c", 6, 200)))
    opts = src.ReadOptions()
    tok = dataset_lib.build_tokenizer("byte")
    one = store_lib.build_store(str(tmp_path / "one"), corpus, opts, tok, workers=1)
    two = store_lib.build_store(str(tmp_path / "two"), corpus, opts, tok, workers=2)
    assert store_files(str(tmp_path / "one")) == store_files(str(tmp_path / "two"))
    assert one["corpus_fingerprint"] == two["corpus_fingerprint"] and len(one["pieces"]) == 6
    # Other piece sizes cut other shards, around the same tokens.
    store_lib.build_store(str(tmp_path / "small"), corpus, opts, tok, piece_bytes=4096)
    a, b = store_lib.open_store(str(tmp_path / "one")), store_lib.open_store(str(tmp_path / "small"))
    assert len(b.manifest["pieces"]) > 12
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(getattr(a, split).tokens), np.asarray(getattr(b, split).tokens))
        assert np.array_equal(getattr(a, split).doc_ends, getattr(b, split).doc_ends)


def test_killed_or_out_of_disk_prepare_resumes_to_the_same_store(tmp_path):
    """SIGKILL after some pieces, then a full disk, then the same command: the store equals an
    uninterrupted build's, and nothing half-written is ever read."""
    args = prepare_args(jsonl_corpus(tmp_path / "c", 24, 2500), "sentencepiece", "--workers=1")
    clean = lmjax(*args, f"--config.data.cache_dir={tmp_path / 'clean'}")
    assert clean.returncode == 0, clean.stderr
    clean_store = json.loads(clean.stdout.splitlines()[-1])["store"]

    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "lmjax.cli.main", *args, f"--config.data.cache_dir={cache}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("stores/*/shards/*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("stores/*/shards/*.json")))
    assert proc.returncode == -signal.SIGKILL and 3 <= done < 24, done
    assert not list(cache.glob("stores/*/manifest.json"))  # an unfinished store is never read

    limit = min(p.stat().st_size for p in cache.glob("stores/*/shards/*.train.bin")) // 2

    killed_tmp = list(cache.glob("stores/*/shards/*.tmp-*"))  # what SIGKILL left: cleared at the next start

    def small_disk():  # writes past `limit` bytes of a file fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run([sys.executable, "-m", "lmjax.cli.main", *args, f"--config.data.cache_dir={cache}"],
                          cwd=REPO, capture_output=True, text=True, preexec_fn=small_disk)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and len(errors) == 1 and "free disk space" in errors[0], full.stderr
    assert len(list(cache.glob("stores/*/shards/*.json"))) == done  # the finished pieces stay
    assert killed_tmp and not list(cache.glob("stores/*/shards/*.tmp-*"))  # the failed one left nothing either

    resumed = lmjax(*args, f"--config.data.cache_dir={cache}")
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout.splitlines()[-1])
    assert store_files(out["store"]) == store_files(clean_store)
    assert out["train_documents"] + out["val_documents"] == 24 * 2500


def test_prepare_command_line(tmp_path):
    """`lmjax prepare` takes train's flags and prints one final JSON line; bad input is one line."""
    write_jsonl(tmp_path / "c.jsonl", 500)
    r = lmjax("prepare", f"--config.data.corpus={tmp_path / 'c.jsonl'}", f"--config.data.cache_dir={tmp_path}",
              "--workers=2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert set(out) >= {"store", "train_tokens", "val_tokens", "train_documents", "val_documents", "bytes",
                        "seconds", "tokens_per_s"}
    manifest = json.loads(Path(out["store"], "manifest.json").read_text())
    assert out["train_tokens"] == manifest["train"]["tokens"] and out["train_documents"] + out["val_documents"] == 500
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write("{broken\n")
    bad = write_jsonl(tmp_path / "bad.jsonl", 3)
    with open(bad, "a") as f:
        f.write('{"txt": 1}\n')
    r = lmjax("prepare", f"--config.data.corpus={bad}", f"--config.data.cache_dir={tmp_path / 'b'}")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and errors == [f"error: {bad}, line 4: no 'text' field (config.data.text_key); fix "
                                            "the record, or set config.data.bad_records='skip' to leave such "
                                            "records out (they are counted in the store's manifest)"], r.stderr
    r = lmjax("prepare", f"--config.data.corpus={bad}", f"--config.data.cache_dir={tmp_path / 'b'}",
              "--config.data.bad_records=skip")
    assert r.returncode == 0 and json.loads(Path(json.loads(r.stdout.splitlines()[-1])["store"],
                                                 "manifest.json").read_text())["bad_records"] == 1


def test_store_keys_follow_what_was_tokenized(tmp_path):
    text = Path(DATA_DIR, "tinyshakespeare", "input.txt").read_text()[:50_000]
    (tmp_path / "small.txt").write_text(text)
    base = dict(corpus=str(tmp_path / "small.txt"))
    folders = {name: prepare(data_cfg(tmp_path, **base, **settings)).cache_dir for name, settings in {
        "byte": dict(tokenizer="byte"),
        "byte, unused vocab_size": dict(tokenizer="byte", vocab_size=123, sp_model_type="unigram"),
        "byte, documents packing": dict(tokenizer="byte", packing="documents"),
        "char": dict(tokenizer="char"),
        "sp 400": dict(tokenizer="sentencepiece", vocab_size=400),
        "sp 420": dict(tokenizer="sentencepiece", vocab_size=420),
        "unigram 400": dict(tokenizer="sentencepiece", vocab_size=400, sp_model_type="unigram"),
        "bpe 400": dict(tokenizer="bpe", vocab_size=400),
        "sp 400, other sample": dict(tokenizer="sentencepiece", vocab_size=400, tokenizer_train_bytes=20_000),
        "byte, val 0.2": dict(tokenizer="byte", val_fraction=0.2),
    }.items()}
    assert folders["byte"] == folders["byte, unused vocab_size"] == folders["byte, documents packing"]
    del folders["byte, unused vocab_size"], folders["byte, documents packing"]
    assert len(set(folders.values())) == len(folders)


def test_tokenizer_trains_on_a_bounded_sample(tmp_path, monkeypatch):
    for i in range(4):
        write_jsonl(tmp_path / "c" / f"{i}.jsonl", 400, start=400 * i)
    seen = []
    real = dataset_lib.build_tokenizer

    def spy(kind, texts="", **kw):
        seen.append(list(texts))
        return real(kind, texts, **kw)

    monkeypatch.setattr(dataset_lib, "build_tokenizer", spy)
    cfg = data_cfg(tmp_path, corpus=str(tmp_path / "c"), tokenizer="bpe", vocab_size=300,
                   tokenizer_train_bytes=30_000)
    prepare(cfg)
    sample = seen[0]
    nbytes = sum(len(t.encode()) for t in sample)
    assert 20_000 < nbytes <= 30_000
    numbers = sorted(int(t.split()[1]) for t in sample)  # records 0..1599, taken from every file
    assert all(any(400 * i <= n < 400 * (i + 1) for n in numbers) for i in range(4))
    # exactly the training documents of smallest sample hash, the last one cut to the budget
    corpus, opts = src.find_corpus(cfg.corpus, DATA_DIR), dataset_lib.read_options(cfg)
    docs = sorted((src.doc_hash(key)[1], text) for p in src.plan_pieces(corpus)
                  for key, text, val in src.documents(corpus, p, opts) if not val)
    assert sample[:-1] == [t for _, t in docs[:len(sample) - 1]]
    assert docs[len(sample) - 1][1].startswith(sample[-1])
    assert sum(len(t.encode()) for _, t in docs[:len(sample)]) > 30_000  # the last one did not fit whole


def test_mixture_shares_one_tokenizer_and_reuses_stores(tmp_path):
    write_jsonl(tmp_path / "web.jsonl", 400)
    cfg = data_cfg(tmp_path, mixture=f"tinyshakespeare:3,{tmp_path / 'web.jsonl'}:1")
    data = prepare(cfg)
    assert [s.name for s in data.sources] == ["tinyshakespeare", "web"] and data.mixture
    assert [s.weight for s in data.sources] == pytest.approx([0.75, 0.25])
    alone = prepare(data_cfg(tmp_path, corpus="tinyshakespeare"))
    assert alone.cache_dir == data.sources[0].store.folder  # byte: the same store
    with pytest.raises(DataError, match="needs one corpus"):
        data.train  # noqa: B018
    sp = prepare(data_cfg(tmp_path, mixture=cfg.mixture, tokenizer="bpe", vocab_size=300))
    assert sp.sources[0].store.manifest["tokenizer_fingerprint"] == sp.sources[1].store.manifest[
        "tokenizer_fingerprint"] == sp.tokenizer.fingerprint


def test_ray_tasks_build_the_same_store(tmp_path):
    """`lmjax prepare --ray ADDRESS` against a real Ray head on this machine: bitwise the local store."""
    pytest.importorskip("ray")
    import socket

    corpus = jsonl_corpus(tmp_path / "c", 3, 600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                           "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True)
    assert head.returncode == 0, head.stderr
    try:
        args = prepare_args(corpus, "bpe")
        remote = lmjax(*args, f"--config.data.cache_dir={tmp_path / 'ray'}", f"--ray=127.0.0.1:{port}")
        assert remote.returncode == 0, remote.stderr
        local = lmjax(*args, f"--config.data.cache_dir={tmp_path / 'local'}", "--workers=1")
        assert local.returncode == 0, local.stderr
        stores = [json.loads(r.stdout.splitlines()[-1])["store"] for r in (remote, local)]
        assert store_files(stores[0]) == store_files(stores[1])
        unreachable = lmjax(*args, f"--config.data.cache_dir={tmp_path / 'x'}", "--ray=127.0.0.1:1")
        errors = [line for line in unreachable.stderr.splitlines() if line.startswith("error:")]
        assert unreachable.returncode == 2 and len(errors) == 1 and "cannot reach the Ray cluster" in errors[0]
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True)
