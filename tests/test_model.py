"""model.py against transformers' Qwen2ForCausalLM (the independent oracle), plus cache and checkpoint errors."""
import json
import os

import pytest
import torch

from model import CheckpointError, KVCache, Qwen2, Qwen2Config

transformers = pytest.importorskip("transformers")
V = 211  # not a power of two


def hf_model(tied, n_kv_groups, head_dim, theta, seed=0, dtype=torch.float32):
    n_head = 4
    hc = transformers.Qwen2Config(
        vocab_size=V, hidden_size=n_head * head_dim, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=n_head, num_key_value_heads=n_head // n_kv_groups, rope_theta=theta,
        tie_word_embeddings=tied, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    m = transformers.Qwen2ForCausalLM(hc)
    with torch.no_grad():  # the default init (std 0.02, zero biases, unit norms) hides mistakes; perturb all
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.to(dtype).eval()


CONFIGS = [  # (tied, query heads per kv head, head_dim, rope_theta)
    (True, 1, 64, 1e4), (False, 2, 128, 1e6), (False, 4, 64, 1e6), (True, 4, 128, 1e4), (False, 1, 128, 1e4)]


@pytest.mark.parametrize("tied,groups,hd,theta", CONFIGS)
def test_logits_match_transformers_fp32(tmp_path, tied, groups, hd, theta):
    ref = hf_model(tied, groups, hd, theta)
    ref.save_pretrained(tmp_path)
    ours = Qwen2.from_pretrained(str(tmp_path)).eval()
    assert ours.config.tie_word_embeddings == tied and ours.config.rope_theta == theta
    for T in (1, 7, 33):
        x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            diff = (ours(x) - ref(x).logits).abs().max().item()
        assert diff <= 1e-4, (T, diff)


def test_logits_match_transformers_bf16(tmp_path):
    ref = hf_model(False, 2, 64, 1e6, dtype=torch.bfloat16)
    ref.save_pretrained(tmp_path)
    ours = Qwen2.from_pretrained(str(tmp_path), dtype=torch.bfloat16).eval()
    assert ours.lm_head.weight.dtype == torch.bfloat16
    x = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x).float(), ref(x).logits.float()
    assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard", [False, True])
def test_save_pretrained_loads_in_transformers(tmp_path, tied, shard):
    src = hf_model(tied, 2, 64, 1e4, seed=1)
    src.save_pretrained(tmp_path / "hf")
    ours = Qwen2.from_pretrained(str(tmp_path / "hf")).eval()
    ours.save_pretrained(str(tmp_path / "ours"), max_shard_bytes=200_000 if shard else 2**30)
    files = os.listdir(tmp_path / "ours")
    assert ("model.safetensors.index.json" in files) == shard
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    x = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(x).logits, ours(x))
    again = Qwen2.from_pretrained(str(tmp_path / "ours")).eval()  # and our own loader reads our output
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


def tiny(tied=False, **kw):
    cfg = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, **kw)
    return Qwen2(cfg).init_weights(seed=0).eval()


def test_cached_decoding_equals_full_forward():
    m = tiny()
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))
    cache = KVCache(m.config, 2, 32)
    with torch.no_grad():
        full = m(x)
        pre = m(x[:, :5], cache=cache)  # prefill 5, then one token at a time
        steps = [m(x[:, t:t + 1], cache=cache) for t in range(5, 20)]
    got = torch.cat([pre] + steps, dim=1)
    assert (got - full).abs().max().item() < 1e-5
    assert cache.lengths.tolist() == [20, 20]


def test_ragged_cache_rows_have_their_own_lengths():
    """Rows prefilled with different lengths, then fed different numbers of new tokens, each match their
    own full forward: what the sampler does when it injects an observation into one sequence only."""
    m = tiny(tied=True)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, V, (n,), generator=g) for n in (9, 4, 13)]
    cache = KVCache(m.config, 3, 40)
    with torch.no_grad():
        # prefill: prompts of lengths 3, 4, 2 (right-padded to 4)
        plen = [3, 4, 2]
        batch = torch.zeros(3, 4, dtype=torch.long)
        for b, n in enumerate(plen):
            batch[b, :n] = seqs[b][:n]
        m(batch, cache=cache, n_new=torch.tensor(plen))
        pos = list(plen)
        # chunks of different sizes per row, including 0 (a paused row)
        for chunk in ([1, 0, 5], [5, 0, 1], [0, 0, 5]):
            T = max(chunk)
            batch = torch.zeros(3, T, dtype=torch.long)
            for b, n in enumerate(chunk):
                batch[b, :n] = seqs[b][pos[b]:pos[b] + n]
            out = m(batch, cache=cache, n_new=torch.tensor(chunk))
            for b, n in enumerate(chunk):
                pos[b] += n
                if n:
                    full = m(seqs[b][None, :pos[b]])[0, pos[b] - n:pos[b]]
                    assert (out[b, :n] - full).abs().max().item() < 1e-5, (chunk, b)
    assert cache.lengths.tolist() == pos


def test_cache_check_room():
    m = tiny()
    cache = KVCache(m.config, 1, 8)
    cache.check_room(8)
    with pytest.raises(RuntimeError, match="KV cache full"):
        cache.check_room(9)


# ---- bad checkpoints: every one is a clear error naming the file and the tensor, never a random init

@pytest.fixture
def ckpt(tmp_path):
    tiny().save_pretrained(str(tmp_path / "ck"))
    return tmp_path / "ck"


def rewrite(path, fn):
    from safetensors.torch import load_file, save_file
    sd = load_file(str(path / "model.safetensors"))
    fn(sd)
    save_file(sd, str(path / "model.safetensors"))


def test_missing_config(ckpt):
    os.remove(ckpt / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen2.from_pretrained(str(ckpt))


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Qwen2.from_pretrained(str(ckpt))


def test_corrupt_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff" * 12
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Qwen2.from_pretrained(str(ckpt))


def test_missing_tensor(ckpt):
    rewrite(ckpt, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        Qwen2.from_pretrained(str(ckpt))


def test_unexpected_tensor(ckpt):
    rewrite(ckpt, lambda sd: sd.__setitem__("model.layers.7.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.layers\.7\.extra\.weight"):
        Qwen2.from_pretrained(str(ckpt))


def test_shape_disagrees_with_config(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight has shape"):
        Qwen2.from_pretrained(str(ckpt))


def test_missing_shard(tmp_path):
    tiny().save_pretrained(str(tmp_path / "ck"), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "ck" / victim)
    with pytest.raises(CheckpointError, match=victim):
        Qwen2.from_pretrained(str(tmp_path / "ck"))


def test_unsupported_config_is_rejected(tmp_path):
    with pytest.raises(NotImplementedError, match="sliding"):
        Qwen2Config.from_dict({"use_sliding_window": True})
    with pytest.raises(NotImplementedError, match="rope scaling"):
        Qwen2Config.from_dict({"rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_save_is_atomic_on_crash(tmp_path, monkeypatch):
    """A crash while writing the new checkpoint leaves the old one loadable and no temp dir behind."""
    m = tiny()
    m.save_pretrained(str(tmp_path / "ck"))
    import model as model_module

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(model_module, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        tiny(tied=True).save_pretrained(str(tmp_path / "ck"))
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert not Qwen2.from_pretrained(str(tmp_path / "ck")).config.tie_word_embeddings
