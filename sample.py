"""The multi-turn sampler: the model reasons, acts, reads what the tool returns and goes on, in one KV cache.

A sequence writes until its closing action tag; its query goes to the search tool (one batched call for
every sequence that acted at that step); the observation text is appended to that sequence's cache only,
and decoding resumes. Nothing already in the cache is computed again. The peers (Search-R1, verl, TRL)
re-prefill every trajectory from scratch after each tool call; `reprefill=True` does exactly that, for
the tests (same greedy trajectories) and for bench/bench_sampler.py (the speed difference).

One idea carries the whole loop: every sequence keeps the tokens of its text that are not in the
cache yet (`pending`). One step = one ragged forward of everyone's pending tokens (model.KVCache lets
each row append its own number), then one sampled token per sequence. The prompts are the first
pending tokens (so step 1 is the prefill), a sampled token is pending until the next step, and an
observation is simply more pending tokens for one row. A step runs two forwards at most: the rows
with several pending tokens (prompts, observations) together, through a view of just their cache
rows, then every other row's one token, so that no decoding row is padded to an observation's length.
sample() is that loop, read top to bottom: forward the pending tokens (_forward_pending), sample one token
per row, and where a row closed an action, answer it (_Injector.act: the tool's observation, or the opening of
one the model writes itself) by appending pending tokens; then keep or rebuild the cache.

Three modes: "real" calls the tool (RL stage 2, eval); "sim" lets the model write its own observation
after the injected opening "\\n\\n<search_result>" (RL stage 1: the model is its own world model);
"none" treats tags as plain text (baselines). Every observation token gets policy_mask 0, the
simulated ones included, so GRPO never trains on observations (in both of the paper's RL stages,
observation tokens get zero advantage).

Who decides when to act: the model, by closing an action tag, unless a `controller` does (the paper's
workflow baselines, eval.py). The controller is asked before a row's first token and after each token the
policy writes, and may answer with a query; the row then acts right there, in the same batched tool call
and the same cache as the model's own actions. RAG is a controller that asks once, before the first token;
a ReAct-style workflow one that asks whenever the current line is a decision sentence. And a prompt may
end with an action already written (`from_action`: a rollout cut right after one, as probe.py uses to
ask the model what it would have read there): it is run before the first token.

Text and tokens: an observation is tokenized on its own and appended after the model's own tokens,
as the SFT data builder tokenizes a trajectory segment by segment; what the model sampled is never
re-tokenized, so the policy's log-probs are of the tokens it really wrote.

Simplified: no speculative decoding, no CUDA graphs, no paged cache; the cache is allocated once per
call (longest prompt + max_new_tokens deep) and finished rows are dropped from it once half are done.

    python sample.py --ckpt runs/sft2 --corpus runs/world/corpus.jsonl --prompt "Who directed Inception?"
    python sample.py --ckpt runs/sft3 --mode sim --temperature 0.6 --seed 1 --prompt "..."
    python -m pytest -q tests/test_sample.py
    python bench/bench_sampler.py
"""
import argparse
import functools
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from env import TAGS, extract_query, format_observation
from model import KVCache

MODES = ("real", "sim", "none")


@dataclass
class Rollout:
    """One sampled trajectory. The lists are filled while sampling; a logits processor sees them live."""
    index: int                       # position in the `prompts` argument
    prompt: list[int]
    completion: list[int] = field(default_factory=list)    # every token after the prompt
    policy_mask: list[int] = field(default_factory=list)   # 1 = the policy sampled it, 0 = observation
    sim_obs_mask: list[int] = field(default_factory=list)  # 1 = observation the model wrote itself (sim)
    queries: list[str] = field(default_factory=list)       # one per action ("" when it had no open tag)
    n_actions: int = 0               # closed actions, refused ones past max_actions included
    n_tool_calls: int = 0            # queries actually sent to the tool
    n_failed_calls: int = 0          # of those, the ones it failed to answer (observation "Retrieval failed.")
    finish: str | None = None        # "eos" | "length" (max_new_tokens reached); None while sampling
    phase: str = "policy"            # "policy" | "observation" (writing a simulated one) | "done"
    text: str = ""                   # the decoded completion


@dataclass
class SampleStats:
    prefill_s: float = 0.0   # forwards over whole sequences: the first one, and every re-prefill
    extend_s: float = 0.0    # steps that also take in observations (their rows in a forward of their own)
    decode_s: float = 0.0    # plain decode steps: one token per sequence
    tool_s: float = 0.0      # inside tool.search
    total_s: float = 0.0
    steps: int = 0
    tool_calls: int = 0      # batched tool.search calls
    failed_calls: int = 0    # queries the tool failed to answer (Rollout.n_failed_calls, summed)
    tokens_generated: int = 0  # sampled tokens (policy and simulated observations)
    tokens_injected: int = 0   # observation tokens appended by the sampler
    tokens_forwarded: int = 0  # tokens pushed through the model: what re-prefilling inflates
    tokens_computed: int = 0   # rows x T summed over forwards: the above plus padding and finished rows

    @property
    def tokens_per_s(self):
        return self.tokens_generated / max(self.total_s, 1e-9)


class Rollouts(list):
    """A list of Rollout, in prompt order, with the SampleStats of the call as `.stats`."""

    def __init__(self, rollouts, stats):
        super().__init__(rollouts)
        self.stats = stats


@dataclass
class _Seq:
    r: Rollout
    pending: list[int]   # tokens of prompt + completion that are not in the KV cache yet
    scan_from: int = 0   # completion index where the model's current run of text starts (after the
                         # last injected text): closing tags are looked for from here on, never earlier
    line_from: int = 0   # completion index where its current line starts (what a controller reads)

    def append(self, tok, own_obs):
        """A sampled token: the policy's, or (own_obs) one of an observation the model writes itself (sim)."""
        self.r.completion.append(tok)
        self.r.policy_mask.append(0 if own_obs else 1)
        self.r.sim_obs_mask.append(1 if own_obs else 0)
        self.pending = [tok]  # in the cache at the next step

    def finish(self, why):
        self.r.finish, self.r.phase, self.pending = why, "done", []


def sample_token(logits, temperature=1.0, top_p=1.0, generator=None):
    """logits (N, V) fp32 -> token ids (N,). temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:  # nucleus: the smallest set of top tokens whose mass reaches top_p
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the mass before this token already suffices
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(outside, 0.0))
    # Inverse CDF: the first token whose cumulative mass exceeds u ~ U[0, total). An exact draw from p
    # that, unlike torch.multinomial, never syncs with the host, and needs one random number per row
    # instead of one per vocabulary entry (as the exponential race, argmax(p / E), does). fp64 cumsum,
    # fp32 u: u <= (1 - 2^-24) * total stays below total, so the token found always has p > 0
    # (right=True also skips zero-mass tokens at u = 0).
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator).double() * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def tag_completed(decode, ids, start, tag, piece):
    """If the last token of ids[start:] completes `tag`, the text after the tag in that token (usually
    ""), else None. A tag may span several tokens; each holds >= 1 of its characters, so the last
    len(tag) tokens hold any tag the last token completes. piece(id) is one token's text (cached)."""
    if tag[-1] not in piece(ids[-1]):
        return None  # the fast path: a token that lacks the tag's last character cannot complete it
    window = ids[max(start, len(ids) - len(tag)):]
    text = decode(window)
    at = text.rfind(tag)
    if at < 0 or tag in decode(window[:-1]):
        return None
    return text[at + len(tag):]


class RowView:
    """Some rows of a model.KVCache, seen by Qwen2.forward as a cache of their own (it calls begin, write,
    k[layer], v[layer], start and end, as KVCache defines them): one forward can take in a few rows'
    observations while the other rows are neither computed nor padded. Writes scatter straight into the
    full cache; reads gather the rows' first S slots (S covers every key this forward can see)."""

    def __init__(self, cache, rows, S):
        self.full, self.S = cache, S
        self.idx = torch.tensor(rows, device=cache.lengths.device)  # (n,) rows of the full cache
        self.lengths = cache.lengths[self.idx]  # (n,)
        self.k = _Gathered(cache.k, self.idx, S)
        self.v = _Gathered(cache.v, self.idx, S)

    def begin(self, T, n_new):
        ar = torch.arange(T, device=self.idx.device)
        self.n_new, self.start = n_new.long(), self.lengths.clone()
        positions = self.start[:, None] + ar  # (n, T)
        self.slots = torch.where(ar < self.n_new[:, None], positions, self.full.max_len)  # padding -> trash slot
        return positions

    def write(self, layer, k, v):
        """k, v (n, Hkv, T, hd) into the full cache at (row, head, slot)."""
        n, H, T, hd = k.shape
        where = (self.idx[:, None, None], torch.arange(H, device=k.device)[None, :, None], self.slots[:, None, :])
        self.full.k[layer].index_put_(where, k.to(self.full.k.dtype))
        self.full.v[layer].index_put_(where, v.to(self.full.v.dtype))

    def end(self):
        self.full.lengths[self.idx] = self.lengths + self.n_new


class _Gathered:
    def __init__(self, kv, idx, S):
        self.kv, self.idx, self.S = kv, idx, S

    def __getitem__(self, layer):  # (n, Hkv, S, hd): a copy of these rows' keys, new ones included
        return self.kv[layer][:, :, :self.S].index_select(0, self.idx)


def _forward_last(model, cache, feed, ready, device):
    """One ragged forward of each cache row's `feed` tokens (n_new 0 for an empty one); returns fp32
    logits (len(ready), V) at the last fed token of the `ready` rows only (lm_head on n rows, not B*T)."""
    T = max(len(f) for f in feed)
    # Every host -> device copy before the forward: a copy issued after it would wait for it to finish.
    ids = torch.tensor([f + [0] * (T - len(f)) for f in feed], device=device)  # (B, T) right-padded
    n_new = torch.tensor([len(f) for f in feed], device=device)  # (B,)
    rows = torch.tensor(ready, device=device)  # (n,)
    last_pos = torch.tensor([len(feed[b]) - 1 for b in ready], device=device)  # (n,)
    hidden = model(ids, cache=cache, n_new=n_new, return_hidden=True)  # (B, T, C)
    return F.linear(hidden[rows, last_pos], model.lm_head_weight).float()  # (n, C) -> (n, V)


def _forward_pending(model, cache, rows, stats):
    """Every row's pending tokens through the model, in two forwards at most (module docstring): the rows
    with several (prompts, observations, re-prefills) together, padded only to each other, through a RowView
    of just their cache rows; then every other row's one token (a finished row's none). Returns the rows due
    a token (cache row indices), their fp32 logits (len(ready), V) in that order, and whether the first
    forward ran."""
    device = model.lm_head_weight.device
    many = [b for b, s in enumerate(rows) if len(s.pending) > 1]
    one = [b for b, s in enumerate(rows) if len(s.pending) == 1]
    stats.tokens_forwarded += sum(len(rows[b].pending) for b in many + one)
    logits = []
    if many:
        feed = [rows[b].pending for b in many]
        view = cache if len(many) == len(rows) else RowView(
            cache, many, S=max(len(rows[b].r.prompt) + len(rows[b].r.completion) for b in many))
        logits.append(_forward_last(model, view, feed, range(len(many)), device))
        stats.tokens_computed += len(feed) * max(map(len, feed))
    if one:  # the decode step: one token per row (none for the rows above and for finished rows)
        feed = [s.pending if len(s.pending) == 1 else [] for s in rows]
        logits.append(_forward_last(model, cache, feed, one, device))
        stats.tokens_computed += len(feed)
    return many + one, torch.cat(logits), bool(many)


def _time_step(stats, seconds, rebuild, extended, n_sampled):
    if rebuild:
        stats.prefill_s += seconds
    elif extended:
        stats.extend_s += seconds
    else:
        stats.decode_s += seconds
    stats.steps += 1
    stats.tokens_generated += n_sampled


class _Injector:
    """What one sample() call writes into sequences in the model's stead: the answers to their actions (the
    tool's observations, refusals, the opening and the closing of a simulated observation). Injected tokens
    get both masks 0 and are pending like any other; the budget cuts them, which ends the sequence."""

    def __init__(self, tokenizer, tags, mode, tool, topk, max_new_tokens, max_actions, obs_max_tokens, stats):
        self.decode, self.encode = tokenizer.decode, tokenizer.encode
        self.piece = functools.lru_cache(maxsize=None)(lambda i: self.decode([i]))  # one token's text
        self.tags, self.mode, self.tool, self.topk, self.stats = tags, mode, tool, topk, stats
        self.max_new_tokens, self.max_actions, self.obs_max_tokens = max_new_tokens, max_actions, obs_max_tokens
        self.close_ids = self.encode(f" {tags.result_close}\n\n")  # how a cut or unclosed observation is closed
        if obs_max_tokens <= len(self.close_ids):
            raise ValueError(f"obs_max_tokens must exceed {len(self.close_ids)} (the closing tag alone)")

    def closed(self, s, tag):
        """What the row's last token wrote after `tag` if it completed it, else None (tag_completed)."""
        return tag_completed(self.decode, s.r.completion, s.scan_from, tag, self.piece)

    def act(self, acted, asked):
        """Run one step's actions: the model's (seq, tail, its text since the last observation) where a
        closing tag completed, then the controller's (seq, query). Past max_actions a refusal; in sim mode
        the opening of an observation that the model then writes itself; otherwise ONE batched tool call
        for all of them."""
        searches = []  # (seq, query, tail)
        for s, tail, text in acted:
            r = s.r
            r.n_actions += 1
            query = extract_query(text, self.tags)
            r.queries.append(query or "")
            if r.n_actions > self.max_actions:
                self.observe(s, format_observation(None, limit_reached=True, tags=self.tags), tail)
            elif query is None:  # a closing tag with no opening one: nothing to search for
                self.observe(s, format_observation(None, tags=self.tags), tail)
            elif self.mode == "sim":  # inject the opening; the model writes the rest itself
                r.phase = "observation"
                self.inject(s, self.encode_after(f"\n\n{self.tags.result_open}", tail))
            else:
                searches.append((s, query, tail))
        for s, query in asked:  # max_actions is the controller's to keep
            s.r.n_actions += 1
            s.r.queries.append(query)
            searches.append((s, query, "" if s.r.completion else "\n\n"))  # "\n\n": skip the leading blank line
        if searches:
            self.search(searches)

    def search(self, searches):
        t0 = time.perf_counter()
        results = self.tool.search([q for _, q, _ in searches], self.topk)
        self.stats.tool_s += time.perf_counter() - t0
        self.stats.tool_calls += 1
        if len(results) != len(searches):
            raise RuntimeError(f"tool returned {len(results)} results for {len(searches)} queries")
        for (s, _, tail), docs in zip(searches, results):
            s.r.n_tool_calls += 1
            if docs is None:  # the tool failed (RemoteSearch never raises): count it apart
                s.r.n_failed_calls += 1
                self.stats.failed_calls += 1
            self.observe(s, format_observation(docs, tags=self.tags), tail)

    def end_own_observation(self, s):
        """sim: the model writes " result 1: ... </search_result>". Once it closes the tag, the "\\n\\n" after
        it is injected (format_observation's closing); at obs_max_tokens it is closed for the model."""
        tail = self.closed(s, self.tags.result_close)
        if tail is not None:
            s.r.phase = "policy"
            self.inject(s, self.encode_after("\n\n", tail))
        elif len(s.r.completion) - s.scan_from >= self.obs_max_tokens:
            s.r.phase = "policy"
            self.inject(s, self.close_ids)

    def observe(self, s, obs, tail):
        ids = self.encode_after(obs, tail)
        if len(ids) > self.obs_max_tokens:  # cut the documents, keep the closing tag
            ids = ids[:self.obs_max_tokens - len(self.close_ids)] + self.close_ids
        self.inject(s, ids)

    def encode_after(self, text, tail):
        """Token ids of injected text. `tail` is what the model's last token already wrote after its tag
        (e.g. the "\\n\\n" of a ">\\n\\n" token): skipped, so the text reads exactly once."""
        return self.encode(text[len(tail):] if tail and text.startswith(tail) else text)

    def inject(self, s, ids):
        r, room = s.r, self.max_new_tokens - len(s.r.completion)
        kept = ids[:room]
        r.completion += kept
        r.policy_mask += [0] * len(kept)
        r.sim_obs_mask += [0] * len(kept)
        s.pending += kept
        s.scan_from = s.line_from = len(r.completion)
        self.stats.tokens_injected += len(kept)
        if len(ids) >= room:
            s.finish("length")


def _first_actions(inj, seqs, from_action, controller):
    """Before the first token: the actions the prompts end with (from_action), and the controller's first
    word (RAG). Returns them as act() takes them."""
    acted, asked = [], []
    for s in seqs if from_action else []:
        tail = tag_completed(inj.decode, s.r.prompt, 0, inj.tags.search_close, inj.piece)
        if tail is None:
            raise ValueError(f"prompt {s.r.index} does not end with {inj.tags.search_close!r} (from_action)")
        text = inj.decode(s.r.prompt).rpartition(inj.tags.result_close)[2]  # after its last observation
        acted.append((s, tail, text))
    for s in seqs if controller else []:
        query = controller(s.r, 0)
        if query is not None:
            asked.append((s, query))
    return acted, asked


def _reprefill(cache, rows, keep):
    """The peers' way: forget the cache, prefill every live sequence again (its whole text is pending)."""
    rows = [rows[b] for b in keep]
    cache.k, cache.v = cache.k[:, :len(rows)], cache.v[:, :len(rows)]  # views: contents are rewritten
    cache.lengths = torch.zeros(len(rows), dtype=torch.long, device=cache.lengths.device)
    for s in rows:
        s.pending = s.r.prompt + s.r.completion
    return rows


def _drop_finished(cache, rows, keep):
    """Drop finished rows from the cache (a copy of the kept rows: worth it once half are finished)."""
    idx = torch.tensor(keep, device=cache.lengths.device)
    cache.k, cache.v, cache.lengths = cache.k[:, idx], cache.v[:, idx], cache.lengths[idx]
    return [rows[b] for b in keep]


def _eos_set(tokenizer, eos_id=None):
    """The ids that end a sequence: eos_id (an int or a collection of ints), else the tokenizer's eos_ids
    (tokenizer.Tokenizer: every id generation_config.json lists), else its eos_id (a stand-in tokenizer)."""
    ids = eos_id if eos_id is not None else getattr(tokenizer, "eos_ids", None) or tokenizer.eos_id
    return frozenset([ids] if isinstance(ids, int) else ids)


def _check_arguments(prompts, mode, tool, controller, max_new_tokens):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "real" and tool is None:
        raise ValueError('mode "real" needs a search tool (or use mode "sim" / "none")')
    if controller is not None and tool is None:
        raise ValueError("a controller's queries need a search tool")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@torch.inference_mode()
def sample(model, tokenizer, prompts, tool=None, mode="real", max_new_tokens=1024, max_actions=10,
           temperature=0.6, top_p=1.0, greedy=False, seed=0, topk=3, obs_max_tokens=512,
           reprefill=False, logits_processor=None, eos_id=None, tags=TAGS, controller=None, from_action=False):
    """Sample one trajectory per prompt (lists of token ids, already chat-formatted) -> Rollouts.

    max_new_tokens  budget per sequence for everything after the prompt, observations included; an
                    observation that does not fit is cut and the sequence ends ("length").
    max_actions     actions past this many get "Reach the limit of search times." and no search.
    greedy          argmax decoding (also when temperature == 0); otherwise temperature + top_p,
                    drawn from a torch.Generator seeded with `seed`, so runs repeat exactly.
    topk            documents per query. obs_max_tokens: an observation longer than this (real) is
                    cut and closed; a simulated one not closed by then is closed for the model.
    reprefill       the peers' way: rebuild every live row's cache from scratch after each
                    injection (same trajectories under greedy decoding, much slower).
    logits_processor  fn(logits (n, V) fp32, rollouts) -> logits, called before sampling every step
                    on the sequences due a token (rollouts[i] is row i, in progress: completion,
                    masks, n_actions, phase...). Use it to ban or force tokens.
    eos_id          an id or a collection of ids that end a sequence when sampled (default
                    tokenizer.eos_ids: every eos id of generation_config.json); an injected one never does.
    controller      fn(rollout, line_start) -> query or None: who decides when to act, instead of the
                    model (the model's own tags then act only as `mode` says: "none" for a workflow).
                    Asked before a row's first token and after each token the policy writes;
                    rollout.completion[line_start:] is its current line. A query is an action: counted,
                    sent to `tool` with the step's other queries (max_actions is the controller's to
                    keep), its observation injected right after. Before the first token the observation
                    drops its leading blank line (it follows the prompt's `<think>\\n`: RAG).
    from_action     every prompt ends with a closed action (a rollout cut right after its closing tag):
                    it is run before the first token, as if the model had just written it.
    """
    _check_arguments(prompts, mode, tool, controller, max_new_tokens)
    param = model.lm_head_weight
    device = param.device
    # The cache holds k and v as the forward makes them: in autocast's dtype when the caller runs the
    # sampler under torch.autocast (fp32 master weights, bf16 compute; common.autocast).
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else param.dtype
    eos = _eos_set(tokenizer, eos_id)
    temperature = 0 if greedy else temperature
    generator = torch.Generator(device=device).manual_seed(seed)
    stats = SampleStats()
    inj = _Injector(tokenizer, tags, mode, tool, topk, max_new_tokens, max_actions, obs_max_tokens, stats)

    t_start = time.perf_counter()
    seqs = [_Seq(Rollout(i, list(p)), pending=list(p)) for i, p in enumerate(prompts)]  # prompts: the first pending
    rows = list(seqs)  # rows[b] lives in cache row b
    cache = KVCache(model.config, len(rows), max(map(len, prompts)) + max_new_tokens, device, dtype)
    inj.act(*_first_actions(inj, seqs, from_action, controller))  # their observations are pending too

    rebuild = True  # the next forward covers whole sequences (the prefill)
    while any(s.r.finish is None for s in rows):
        # ---- one step: everyone's pending tokens through the model, then one sampled token per row
        t0 = time.perf_counter()
        ready, logits, extended = _forward_pending(model, cache, rows, stats)
        if logits_processor is not None:
            logits = logits_processor(logits, [rows[b].r for b in ready])
        next_ids = sample_token(logits, temperature, top_p, generator).tolist()  # the one host sync
        _time_step(stats, time.perf_counter() - t0, rebuild, extended, len(ready))

        # ---- append each token (pending until the next step), then look at what it did: eos, the budget,
        # the end of the model's own observation (sim), a closing action tag; or the controller acts
        injected_before = stats.tokens_injected
        acted, asked = [], []  # (seq, what its last token wrote after the closing tag, its text), (seq, query)
        for b, tok in zip(ready, next_ids):
            s = rows[b]
            writing_obs = s.r.phase == "observation"
            s.append(tok, writing_obs)
            if tok in eos:
                s.finish("eos")
            elif len(s.r.completion) >= max_new_tokens:
                s.finish("length")
            elif writing_obs:  # sim mode: closed by the model, or for it at obs_max_tokens
                inj.end_own_observation(s)
            elif mode != "none" and (tail := inj.closed(s, tags.search_close)) is not None:  # the model acts
                acted.append((s, tail, inj.decode(s.r.completion[s.scan_from:])))
            elif controller is not None:  # or the controller (RAG, workflow) acts for it
                query = controller(s.r, s.line_from)
                if query is not None:
                    asked.append((s, query))
                elif "\n" in inj.piece(tok):  # the line is over; the next starts after this token
                    s.line_from = len(s.r.completion)
        # ---- the actions: real mode searches (one batched call for the step), sim lets the model write the
        # observation, past max_actions a refusal. What is injected is pending: the next forward takes it in
        inj.act(acted, asked)

        # ---- the cache: rebuilt after an injection (reprefill), or finished rows dropped once half are
        keep = [b for b, s in enumerate(rows) if s.r.finish is None]
        rebuild = reprefill and stats.tokens_injected > injected_before
        if rebuild:
            rows = _reprefill(cache, rows, keep)
        elif keep and len(keep) <= len(rows) // 2:
            rows = _drop_finished(cache, rows, keep)

    for s in seqs:
        s.r.text = inj.decode(s.r.completion)
    stats.total_s = time.perf_counter() - t_start
    return Rollouts([s.r for s in seqs], stats)


# -----------------------------------------------------------------------------
# The sampler's flags, defined once: this CLI, grpo.py, eval.py, probe.py and bench/ add them from here

SAMPLING_DEFAULTS = dict(max_new_tokens=1024, temperature=0.6, top_p=1.0, topk=3, max_actions=10,
                         obs_max_tokens=512)  # sample()'s own defaults (tests/test_sample.py checks)


def add_sampling_args(ap, only=None, **defaults):
    """Add the sampler's flags to an argparse parser: all of them, or the names in `only`. `defaults`
    override SAMPLING_DEFAULTS (say why where you call it). sampling_kwargs(args) gives them back as
    sample()'s keyword arguments."""
    unknown = set(defaults) - set(SAMPLING_DEFAULTS) | set(only or ()) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise TypeError(f"add_sampling_args: no sampler flag {sorted(unknown)}; have {sorted(SAMPLING_DEFAULTS)}")
    d = {**SAMPLING_DEFAULTS, **defaults}
    flags = {"max_new_tokens": (int, "budget per trajectory after the prompt, observations included"),
             "temperature": (float, "sampling temperature (0 = greedy)"),
             "top_p": (float, "nucleus sampling mass (1 = off)"),
             "topk": (int, "documents per search"),
             "max_actions": (int, "searches per trajectory; past them the limit message, no search"),
             "obs_max_tokens": (int, "longest observation (cut and closed beyond)")}
    group = ap.add_argument_group("sampling (sample.py)")
    for name, (type_, help_) in flags.items():
        if only is None or name in only:
            group.add_argument("--" + name.replace("_", "-"), type=type_, default=d[name], help=help_)
    return group


def sampling_kwargs(args):
    """The sampler flags found in parsed `args`, as sample()'s keyword arguments."""
    return {k: getattr(args, k) for k in SAMPLING_DEFAULTS if hasattr(args, k)}


# -----------------------------------------------------------------------------
# Command line

def main(argv=None):
    import env
    from model import Qwen2
    from checkpoints import resolve_checkpoint
    from tokenizer import Tokenizer
    from viewer import terminal

    ap = argparse.ArgumentParser(description="Sample AutoCoA trajectories (KV cache kept across tool calls).")
    ap.add_argument("--ckpt", required=True, help="checkpoint directory, or a stage's --out (its latest checkpoint)")
    ap.add_argument("--prompt", action="append", required=True, help="a question; repeat the flag for a batch")
    ap.add_argument("--corpus", help="JSONL corpus to search with in-process BM25")
    ap.add_argument("--search-url", help="URL of a Search-R1-compatible /retrieve server")
    ap.add_argument("--mode", choices=MODES, help="real (default with a tool), sim, none (default without)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_sampling_args(ap, temperature=0.0)  # a trajectory to read: the greedy one unless asked
    ap.add_argument("--reprefill", action="store_true", help="re-prefill after every observation (the peers' way)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    a = ap.parse_args(argv)
    if a.corpus and a.search_url:
        ap.error("give --corpus or --search-url, not both")
    spec = a.corpus or a.search_url
    mode = a.mode or ("real" if spec else "none")
    if mode == "real" and not spec:
        ap.error("--mode real needs --corpus or --search-url")
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    print(f"device {a.device}, dtype {dtype}, mode {mode}", file=sys.stderr)

    ckpt = resolve_checkpoint(a.ckpt)
    if ckpt is None:
        ap.error(f"--ckpt {a.ckpt}: no checkpoint there (config.json or a 'latest' pointer)")
    model = Qwen2.from_pretrained(ckpt, device=a.device, dtype=dtype).eval()
    tok = Tokenizer.from_pretrained(ckpt)
    tool = env.make_search_tool(spec) if spec and mode == "real" else None
    if tool is not None:
        print(f"search tool: {tool.check()}", file=sys.stderr)  # raises SearchError: refuse to start
    prompts = [tok.encode(tok.agent_prompt(q, env.INSTRUCTION)) for q in a.prompt]
    out = sample(model, tok, prompts, tool=tool, mode=mode, seed=a.seed, reprefill=a.reprefill,
                 **sampling_kwargs(a))
    color = sys.stdout.isatty()
    for q, r in zip(a.prompt, out):
        print(f"=== {q}\n{terminal(r, tok.decode, color)}")
        print(f"--- finish {r.finish}, {len(r.completion)} tokens, {r.n_actions} actions, "
              f"{r.n_tool_calls} searches, queries {r.queries}, answer {env.extract_answer(r.text)!r}")
    s = out.stats
    print(f"prefill {s.prefill_s:.2f}s  extend {s.extend_s:.2f}s  decode {s.decode_s:.2f}s  tool {s.tool_s:.2f}s  "
          f"total {s.total_s:.2f}s  {s.tokens_generated} tokens generated ({s.tokens_per_s:.1f}/s)")
    if s.failed_calls:
        print(f"{s.failed_calls} searches failed; last error: {tool.last_error}", file=sys.stderr)


if __name__ == "__main__":
    main()
