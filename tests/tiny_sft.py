"""A tiny SFT set-up shared by tests/test_precision.py and tests/test_dcp.py: 8 stage-2 trajectories of a tiny
world and a random tiny Qwen2 with the world's own tokenizer, saved in a given dtype (its config.json's
torch_dtype, which is what the stages export)."""
import os

import torch

from model import Qwen2, Qwen2Config


def tiny_sft(root, world, dtype=torch.float32):
    """-> (data dir holding stage2.jsonl, init checkpoint dir), from the tiny world of tests/conftest.py."""
    import pretrain  # train_tokenizer: the stage's own tokenizer recipe
    data = root / "data"
    data.mkdir()
    with open(os.path.join(world, "stage2.jsonl")) as f:
        (data / "stage2.jsonl").write_text("".join(f.readlines()[:8]))
    tok = pretrain.train_tokenizer(world, [], 400)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tok.eos_id)
    init = str(root / "init")
    Qwen2(cfg).init_weights(seed=0).to(dtype).save_pretrained(init)
    tok.save(os.path.join(init, "tokenizer.json"))
    return str(data), init
