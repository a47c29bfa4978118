"""Embedders and the on-disk embedding cache: a tiny BERT built from a config (tokenizer
trained on the fly) and the bundled MiniLM, both loaded through the user's code path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from filters.lib.embed import build_embedder, default_hf_model
from shared_helpers import count_calls

CORPUS = [
    "a red car parked next to a blue bench",
    "two cats sleeping on a green sofa",
    "a wooden table with three apples",
    "a neon sign reading 'open' above a door",
    "an oil painting of a lighthouse in a storm",
    "a small dog running across a snowy field",
]


def _tiny_bert(folder, seed: int) -> str:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert"), seed=0)


def test_tiny_bert_shapes_norms_order_and_batching(tiny):
    # float32: "auto" is bf16 on CPUs with native bf16, and these checks are about order and padding
    emb = build_embedder(model=tiny, batch_size=2, progress=False, dtype="float32")
    assert emb.name.startswith("hf:") and emb.dim == 32
    v = emb.encode(CORPUS)
    assert v.shape == (len(CORPUS), 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Row order follows the input although batches are length-sorted; padding in a batch
    # must not change a vector (the mask excludes it from the mean).
    np.testing.assert_allclose(emb.encode(CORPUS[::-1]), v[::-1], atol=1e-5)
    one_by_one = np.stack([emb.encode([t])[0] for t in CORPUS])
    np.testing.assert_allclose(one_by_one, v, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in v}) == len(CORPUS)


def test_cache_reused_across_builds_and_repeats_computed_once(tiny, tmp_path):
    first = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)
    calls = count_calls(first, "_encode_texts")
    v = first.encode(CORPUS + CORPUS[:2])  # the two repeats are embedded once
    assert sum(calls) == len(CORPUS)
    np.testing.assert_array_equal(v[-2:], v[:2])
    shards = sorted(tmp_path.rglob("*.safetensors"))
    assert shards

    again = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)  # a new build, same cache
    calls = count_calls(again, "_encode_texts")
    np.testing.assert_array_equal(again.encode(CORPUS[::-1]), v[: len(CORPUS)][::-1])
    assert calls == [] and sorted(tmp_path.rglob("*.safetensors")) == shards
    # Only what is new gets computed.
    again.encode(CORPUS + ["a brand new prompt"])
    assert calls == [1]


def test_other_weights_do_not_share_the_cache(tiny, tmp_path):
    other = _tiny_bert(tmp_path / "other", seed=1)
    a = build_embedder(model=tiny, cache_dir=tmp_path / "c", progress=False)
    b = build_embedder(model=other, cache_dir=tmp_path / "c", progress=False)
    assert a.name != b.name
    assert not np.allclose(a.encode(CORPUS[:1]), b.encode(CORPUS[:1]))


def _flip(data: bytes, tensor: str) -> bytes:
    """One byte flipped inside a tensor's data; the safetensors header stays valid."""
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + n])[tensor]["data_offsets"]
    at = 8 + n + (start + end) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize("damage", ["truncate", "flip_vectors", "flip_keys", "garbage"])
def test_corrupt_cache_shard_is_recomputed(tiny, tmp_path, damage):
    reference = build_embedder(model=tiny, cache_dir=tmp_path, progress=False).encode(CORPUS)
    (shard,) = tmp_path.rglob("*.safetensors")
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) - 100])
    elif damage.startswith("flip"):
        shard.write_bytes(_flip(data, damage.removeprefix("flip_")))
    else:
        shard.write_bytes(b"\x00garbage")
    emb = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)
    calls = count_calls(emb, "_encode_texts")
    np.testing.assert_allclose(emb.encode(CORPUS), reference, atol=1e-6)
    assert sum(calls) == len(CORPUS)
    # The damaged shard was replaced by a good one: the next build reads it again.
    emb2 = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)
    calls2 = count_calls(emb2, "_encode_texts")
    np.testing.assert_allclose(emb2.encode(CORPUS), reference, atol=1e-6)
    assert calls2 == []


def test_unknown_kind_and_misplaced_option():
    with pytest.raises(ValueError, match="unknown kind"):
        build_embedder(kind="word2vec")
    with pytest.raises(ValueError, match="pretrained"):
        build_embedder(kind="hf", pretrained="openai")


def test_bundled_minilm_is_the_offline_default(tmp_path):
    emb = build_embedder(cache_dir=tmp_path, progress=False)
    assert emb.name.startswith("hf:sentence-transformers/all-MiniLM-L6-v2@256") and emb.dim == 384
    assert default_hf_model().endswith("model")
    assert emb.model is None, "the model loads on the first cache miss, not before"
    v = emb.encode(["a red car and a blue bench", "a blue bench and a red car", "a bowl of ramen on a wooden table"])
    sims = v @ v.T
    assert sims[0, 1] > 0.95  # the same scene, order swapped
    assert sims[0, 2] < 0.5  # an unrelated scene


def test_bf16_embeddings_match_fp32():
    texts = ["a red car and a blue bench", "a lighthouse on a cliff at dusk, oil painting", "two cats"]
    fp32 = build_embedder(progress=False, dtype="float32").encode(texts)
    bf16 = build_embedder(progress=False, dtype="bfloat16").encode(texts)
    assert (fp32 * bf16).sum(1).min() > 0.999
    with pytest.raises(ValueError, match="dtype"):
        build_embedder(progress=False, dtype="int4")


def test_a_cache_folder_that_cannot_be_written_only_means_no_cache(tiny, tmp_path):
    reference = build_embedder(model=tiny, cache_dir=None, progress=False).encode(CORPUS)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")  # so mkdir fails, even for root
    with pytest.warns(UserWarning, match="embedding cache off: cannot use") as caught:
        emb = build_embedder(model=tiny, cache_dir=blocker / "cache", progress=False)
        np.testing.assert_allclose(emb.encode(CORPUS), reference, atol=1e-6)
        np.testing.assert_allclose(emb.encode(CORPUS[:2]), reference[:2], atol=1e-6)
    assert len([w for w in caught if "embedding cache" in str(w.message)]) == 1


def test_a_cache_folder_that_fails_mid_build_stops_caching_with_one_warning(tiny, tmp_path):
    emb = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)
    reference = emb.encode(CORPUS[:3])
    (folder,) = {p.parent for p in tmp_path.rglob("*.safetensors")}
    for shard in folder.iterdir():
        shard.unlink()
    folder.rmdir()
    folder.write_text("the folder is gone: every write fails")  # as a full or read-only disk does
    with pytest.warns(UserWarning, match="embedding cache: cannot write") as caught:
        out = emb.encode(CORPUS)
        emb.encode(CORPUS[3:] + ["one more prompt"])
    np.testing.assert_allclose(out[:3], reference, atol=1e-6)
    assert len([w for w in caught if "cannot write" in str(w.message)]) == 1  # not one per shard


def test_a_shard_with_valid_checksums_but_inconsistent_rows_is_a_miss(tiny, tmp_path):
    import hashlib

    from safetensors.numpy import load_file, save_file

    reference = build_embedder(model=tiny, cache_dir=tmp_path, progress=False).encode(CORPUS)
    (shard,) = tmp_path.rglob("*.safetensors")
    tensors = load_file(str(shard))
    for vectors in (np.full_like(tensors["vectors"], np.nan), tensors["vectors"][:-2]):  # non-finite; short
        meta = {f"{k}_blake2b": hashlib.blake2b(np.ascontiguousarray(v).data, digest_size=16).hexdigest()
                for k, v in (("keys", tensors["keys"]), ("vectors", vectors))}
        save_file({"keys": tensors["keys"], "vectors": np.ascontiguousarray(vectors)}, str(shard), metadata=meta)
        emb = build_embedder(model=tiny, cache_dir=tmp_path, progress=False)
        calls = count_calls(emb, "_encode_texts")
        with pytest.warns(UserWarning, match="ignoring damaged shard"):
            out = emb.encode(CORPUS)
        np.testing.assert_allclose(out, reference, atol=1e-6)  # recomputed, never the shard's NaN
        assert sum(calls) == len(CORPUS)
