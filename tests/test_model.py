"""model.py against transformers' Qwen2ForCausalLM (the independent oracle, run in a process of its own by
tests/hf_oracle.py), plus cache and checkpoint errors, and the message a user gets who runs transformers in the
repository root (kernels/__init__.py)."""
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

import hf_oracle
from model import CheckpointError, KVCache, Qwen2, Qwen2Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 211  # not a power of two
CONFIGS = [  # (tied, query heads per kv head, head_dim, rope_theta)
    (True, 1, 64, 1e4), (False, 2, 128, 1e6), (False, 4, 64, 1e6), (True, 4, 128, 1e4), (False, 1, 128, 1e4)]
LENGTHS = (1, 7, 33)
SAVES = [(tied, shard) for tied in (True, False) for shard in (False, True)]


def tokens(B, T, seed):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_model(out, tied, n_kv_groups, head_dim, theta, seed=0, dtype="float32", ids=()):
    """The oracle job that builds a transformers Qwen2 with every parameter perturbed, saves it to `out` and
    returns its logits on each of `ids`."""
    n_head = 4
    config = dict(vocab_size=V, hidden_size=n_head * head_dim, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=n_head, num_key_value_heads=n_head // n_kv_groups, rope_theta=theta,
                  tie_word_embeddings=tied, rms_norm_eps=1e-6)
    return dict(task="build", config=config, seed=seed, perturb=0.05, dtype=dtype, out=str(out),
                ids=[x.tolist() for x in ids])


def perturbed(tied, seed=1):
    """Our Qwen2 in a shape hf_model builds (2 query heads per kv head, head_dim 64), every parameter perturbed as
    the oracle's build does (the default init, zero biases and unit norms, would hide a tensor saved under another
    tensor's name): the save test's source."""
    cfg = Qwen2Config(vocab_size=V, hidden_size=256, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_theta=1e4, tie_word_embeddings=tied, rms_norm_eps=1e-6)
    m = Qwen2(cfg).init_weights(seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():  # a tied embedding is one parameter: perturbed once
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def oracle_jobs(folder):
    """Everything this module asks transformers (tests/conftest.py's oracle fixture batches it with other modules'):
    each of CONFIGS built in fp32 with its logits at every length of LENGTHS, one built in bf16, and for each of
    SAVES our model (perturbed) saved by us, tied or not, sharded or not, read by AutoModelForCausalLM, with its
    logits on tokens(3, 7, 2)."""
    jobs = {("fp32", *c): hf_model(folder / f"fp32-{i}", *c, ids=[tokens(2, T, T) for T in LENGTHS])
            for i, c in enumerate(CONFIGS)}
    jobs["bf16"] = hf_model(folder / "bf16", False, 2, 64, 1e6, dtype="bfloat16", ids=[tokens(2, 33, 0)])
    for tied, shard in SAVES:
        saved = folder / f"ours-{tied}-{shard}"
        perturbed(tied).save_pretrained(str(saved), max_shard_bytes=200_000 if shard else 2**30)
        jobs["saved", tied, shard] = dict(task="logits", path=str(saved), ids=[tokens(3, 7, 2).tolist()])
    return jobs


@pytest.fixture(scope="module")
def hf(oracle):
    """{key of oracle_jobs: {"path": the folder, "logits": [transformers' logits on each input]}}."""
    return {k: {"path": job.get("out", job.get("path")), "logits": r["logits"]} for k, (job, r) in
            oracle[__name__].items()}


@pytest.mark.parametrize("tied,groups,hd,theta", CONFIGS)
def test_logits_match_transformers_fp32(hf, tied, groups, hd, theta):
    ref = hf["fp32", tied, groups, hd, theta]
    ours = Qwen2.from_pretrained(ref["path"]).eval()
    assert ours.config.tie_word_embeddings == tied and ours.config.rope_theta == theta
    for T, theirs in zip(LENGTHS, ref["logits"]):
        with torch.no_grad():
            diff = (ours(tokens(2, T, T)) - theirs).abs().max().item()
        assert diff <= 1e-4, (T, diff)


def test_logits_match_transformers_bf16(hf):
    ours = Qwen2.from_pretrained(hf["bf16"]["path"], dtype=torch.bfloat16).eval()
    assert ours.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        a, b = ours(tokens(2, 33, 0)).float(), hf["bf16"]["logits"][0].float()
    assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard", [False, True])
def test_save_pretrained_loads_in_transformers(hf, tied, shard):
    saved = hf["saved", tied, shard]
    ours, folder, theirs = perturbed(tied), saved["path"], saved["logits"][0]  # (perturbed is seeded: what was saved)
    assert ("model.safetensors.index.json" in os.listdir(folder)) == shard
    x = tokens(3, 7, 2)
    with torch.no_grad():
        assert torch.equal(theirs, ours(x))
    again = Qwen2.from_pretrained(str(folder)).eval()  # and our own loader reads our output
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


# ---- transformers started in the repository root finds our kernels/ before Hugging Face's `kernels` package

def test_kernels_package_names_itself():
    """A name kernels/ lacks is an ImportError that says which folder this is (what transformers asks for:
    `from kernels import CUDAProperties`); its submodules and dunder probes behave as usual."""
    import kernels
    with pytest.raises(ImportError, match=r"AutoCoA project's own kernels/ folder, not Hugging Face's"):
        from kernels import CUDAProperties  # noqa: F401
    from kernels import logprobs  # a submodule not imported yet still imports
    assert logprobs.masked_logprobs_reference
    assert getattr(kernels, "__version__", None) is None and not hasattr(kernels, "_private")


def hub_kernels_installed():
    try:
        importlib.metadata.distribution("kernels")  # Hugging Face's; our folder has no distribution metadata
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not (hf_oracle.available() and hub_kernels_installed()),
                    reason="needs transformers and Hugging Face's kernels package (requirements-dev.txt)")
def test_transformers_in_repo_root_gets_a_clear_message():
    """What a user sees who builds a model with transformers in the repository root: our message, not
    transformers' ImportError on a name our kernels/ lacks."""
    code = ("import transformers; transformers.Qwen2ForCausalLM(transformers.Qwen2Config(vocab_size=64, "
            "hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if p.returncode == 0:
        pytest.skip("this transformers builds a Qwen2 without importing the kernels package")
    assert "AutoCoA project's own kernels/ folder, not Hugging Face's `kernels` package" in p.stderr, p.stderr[-3000:]


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


def test_loading_a_checkpoint_builds_no_random_init_and_imports_no_compiler(ckpt):
    """load_pretrained builds the model on the meta device; nn.Embedding's own normal_ init there would import
    torch._dynamo in every process that loads a checkpoint (each evaluation, each stage). A fresh process, so
    that nothing imported it before."""
    code = ("import sys, model; m = model.Qwen2.from_pretrained(sys.argv[1]); "
            "assert not any(p.is_meta for p in m.parameters()); "
            "assert 'torch._dynamo' not in sys.modules, 'loading imported torch._dynamo'")
    p = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


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
