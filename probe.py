"""The world-model probe: at the agent's own actions, does the model know what the search tool returns?

The paper's RL stage 1 has the model write its own observations (sim mode), so how faithful that
simulated world is bounds what the simulated stage can teach. The probe measures it on the embedded world,
where every answer-bearing sentence is known: for questions that need a search (one of their lookups is
about an entity the model was not taught), run the agent with the real tool; at each of its actions, cut
the rollout right after the action and let the model write the observation itself, from the same prefix
(sample.sample(mode="sim", from_action=True): the sampler injects the opening tag exactly as in RL stage 1).
Each predicted observation either states the answer-bearing fact "<Name>'s <relation> is <value>." (right),
the same sentence with another value (wrong), or neither (absent); "real has fact" is how often the tool's
observation held it. Actions are grouped by the split of the entity they ask about (world.json's
entities[].split: known / train / dev / test; a world without splits: known / unknown).

Greedy throughout (the model's best guess, as eval.py). Simplified: only templated queries "<Name>'s
<relation>" are judged; any other query counts as unparsed.

    python probe.py --ckpt runs/sft3                       # dev split of runs/world, its corpus
    python probe.py --ckpt runs/rl --split test --limit 100
    python probe.py --ckpt runs/base --copy 1000 --split test   # copying a value out of a held-out page
    python probe.py --ckpt runs/sft2 --decision 300        # does the first decision depend on the entity, or on
                                                           # which known facts the SFT files recall?
    python -m pytest -q tests/test_probe.py
Outputs (--out FILE.jsonl): FILE.jsonl (one record per action) and FILE.summary.json.
"""
import argparse
import json
import os
import re

import torch

import checkpoints
import common
import env
from data.trajectories import MISSING, act, memory, need, query_for, read, recall
from data.world import composition_text, fact_sentence, phrase
from model import Qwen2
from sample import add_sampling_args, sample, sampling_kwargs
from tokenizer import Tokenizer

GROUPS = ("known", "train", "dev", "test", "unknown")  # table order: entity splits, then a split-less world's


def action_spans(r):
    """[(a, s, e)] per observation of a real-mode rollout: completion[s:e] is the observation the sampler
    injected and completion[a:s] the policy's text before it (since the previous one), ending with the action."""
    spans, a, s = [], 0, None
    for t, m in enumerate(r.policy_mask + [1]):
        if m == 0 and s is None:
            s = t
        elif m == 1 and s is not None:
            spans.append((a, s, t))
            a, s = t, None
    return spans


def parse_query(query, world):
    """A templated query "<Name>'s <relation>" -> (entity dict, relation), or None."""
    by_name = {e["name"]: e for e in world["entities"]}
    name, sep, rel = query.partition("'s ")
    return (by_name[name], rel) if sep and name in by_name and rel in by_name[name]["facts"] else None


def judge(predicted, fact, name, rel):
    """Does a predicted observation state the fact ("right"), the same fact with another value ("wrong"),
    or neither ("absent")?"""
    if fact in predicted:
        return "right"
    return "wrong" if re.search(re.escape(f"{phrase(name, rel)} is ") + r"[^.\n]*\.", predicted) else "absent"


def group_of(entity):
    return entity.get("split") or ("known" if entity["known"] else "unknown")


def end_after_observation(eos):
    """Logits processor for the simulated step: the row starts inside its observation (from_action, sim
    mode), so a row back in the policy's phase has written it; it ends there."""
    def processor(logits, rollouts):
        for row, r in enumerate(rollouts):
            if r.phase == "policy":
                logits[row] = float("-inf")
                logits[row, eos] = 0.0
        return logits
    return processor


def probe(model, tok, rows, world, tool, batch_size=16, max_new_tokens=1024, max_actions=10, topk=3,
          obs_max_tokens=512, logits_processor=None):
    """Compare, at each real action of the agent, the observation the model predicts with the real one.
    Returns (summary, per-action records). logits_processor applies to the agent's rollouts (tests)."""
    lookups = world["question_lookups"]
    known = {e["name"]: e["known"] for e in world["entities"]}
    rows = [row for row in rows if any(not known[n] for n, _ in lookups.get(row["id"], []))]
    gen = dict(temperature=0.0, topk=topk, obs_max_tokens=obs_max_tokens)
    # ---- 1. the agent, real mode: one job per action it took (refused ones past max_actions left out)
    jobs = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        prompts = [common.encode_prompt(tok, row["question"]) for row in batch]
        rolls = sample(model, tok, prompts, tool=tool, mode="real", max_new_tokens=max_new_tokens,
                       max_actions=max_actions, logits_processor=logits_processor, **gen)
        for row, r in zip(batch, rolls):
            for k, (a, s, e) in enumerate(action_spans(r)[:max_actions]):
                jobs.append({"row": row, "query": r.queries[k], "real": tok.decode(r.completion[s:e]),
                             "prefix": r.prompt + r.completion[:s]})
    # ---- 2. the same prefixes, cut right after the action: the model writes the observation itself
    room = len(tok.encode(f"\n\n{env.TAGS.result_open}")) + obs_max_tokens  # the opening, then its own text
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i:i + batch_size]
        outs = sample(model, tok, [j["prefix"] for j in batch], mode="sim", from_action=True, max_new_tokens=room,
                      logits_processor=end_after_observation(tok.eos_id), **gen)
        for j, o in zip(batch, outs):
            j["predicted"] = tok.decode([t for t, m in zip(o.completion, o.sim_obs_mask) if m])
    # ---- 3. does each predicted observation state the answer-bearing fact?
    records, summary = [], {"questions": len(rows), "unparsed": 0}
    for j in jobs:
        lookup = parse_query(j["query"], world)
        if lookup is None:  # not a "<Name>'s <relation>" of this world: no fact to look for
            summary["unparsed"] += 1
            continue
        ent, rel = lookup
        fact = fact_sentence(ent["name"], rel, ent["facts"][rel])
        verdict = judge(j["predicted"], fact, ent["name"], rel)
        group = group_of(ent)
        g = summary.setdefault(group, {"actions": 0, "right": 0, "wrong": 0, "absent": 0, "real_has_fact": 0})
        g["actions"] += 1
        g[verdict] += 1
        g["real_has_fact"] += fact in j["real"]
        records.append({"id": j["row"]["id"], "query": j["query"], "group": group, "fact": fact, "verdict": verdict,
                        "real_has_fact": fact in j["real"], "predicted": j["predicted"], "real": j["real"]})
    return summary, records


def copy_cases(world, tool, n, split="test", topk=3):
    """Up to n (question, text, value, relation) cases, evenly spaced over the facts of the split's entities: a
    one-hop question under the tool's instruction, the step that searches the fact, the tool's result for that
    query, and the line that reads it, cut before the space and its value (data/trajectories.py's format).
    Held-out entities: no training text holds the value, so only copying it predicts it."""
    facts = [(e, rel, value) for e in world["entities"] if group_of(e) == split for rel, value in e["facts"].items()]
    facts = common.evenly_spaced(facts, n)
    results = tool.search([query_for(e["name"], rel) for e, rel, _ in facts], topk)
    cases = []
    for (e, rel, value), docs in zip(facts, results):
        text = need(e["name"], rel) + act(e["name"], rel) + env.format_observation(docs) + read(e["name"], rel, value)
        cases.append((composition_text(e["name"], [rel]), text[:-len(f" {value}.\n")], str(value), rel))
    return cases


def recall_cases(world, n):
    """Up to n (question, text, value, relation) cases over the known entities' facts: the question asked
    plainly (no tool), and the line that recalls the fact, cut before its value. What the base model must
    remember for recalling to be the right move."""
    facts = [(e, rel, value) for e in world["entities"] if e["known"] for rel, value in e["facts"].items()]
    return [(composition_text(e["name"], [rel]), (need(e["name"], rel) + recall(e["name"], rel, value))[:-len(f" {value}.\n")],
             str(value), rel) for e, rel, value in common.evenly_spaced(facts, n)]


def copy_probe(model, tok, cases, batch_size=64, tool=True):
    """Does the model write the value? Teacher-forced over copy_cases (copied out of the result it reads) or
    recall_cases (tool=False: remembered): a value counts when every one of its tokens is the model's most
    likely next token. -> {"values": n, "copied": count, "by_relation": {relation: [copied, n]}} (a model that
    reads by where a fact stands, not by its relation, gets some relations only)."""
    copied, by_relation = 0, {}
    for i in range(0, len(cases), batch_size):
        batch = cases[i:i + batch_size]
        seqs, spans = [], []
        for question, text, value, _ in batch:
            head = common.encode_prompt(tok, question, tool) + tok.encode(text)  # "... X's R is"
            ids = head + tok.encode(" " + value)  # as the model writes it after the line's head
            seqs.append(ids)
            spans.append((len(head), len(ids)))
        ids = common.pad(seqs, tok.eos_id)
        with torch.no_grad(), common.autocast(model):
            best = model(ids[:, :-1].to(next(model.parameters()).device)).argmax(-1).cpu()
        for j, (s, e) in enumerate(spans):
            ok = bool((best[j, s - 1:e - 1] == ids[j, s:e]).all())
            copied += ok
            counts = by_relation.setdefault(batch[j][3], [0, 0])
            counts[0] += ok
            counts[1] += 1
    return {"values": len(cases), "copied": copied, "by_relation": dict(sorted(by_relation.items()))}


NOT_IN_SFT = "known, not in SFT"  # decision_cases' group of the known facts that no SFT text recalls


def decision_cases(world, n, rehearsed=None):
    """Up to n (group, question, prefix text, search text, recall text) per entity split (known, train, test),
    evenly spaced over its entities' facts: a one-hop question under the tool's instruction and its first
    decision point "I need X's R. From memory, X's R is", with the two words on, " missing." and the value
    (data/trajectories.py). rehearsed: the known facts (name, relation) that the SFT data recalls (sft_recalls);
    then up to n more cases, group "known, not in SFT", of the known facts it does not: the base model
    remembers them, but no SFT text taught recalling them, so a decision right on the known facts and wrong on
    these is a list of facts learned in SFT, not read from memory."""
    facts = lambda split: [(e["name"], rel, v) for e in world["entities"] if group_of(e) == split  # noqa: E731
                           for rel, v in e["facts"].items()]
    groups = [(split, facts(split)) for split in ("known", "train", "test")]
    if rehearsed is not None:
        groups.append((NOT_IN_SFT, [f for f in facts("known") if f[:2] not in rehearsed]))
    return [(group, composition_text(name, [rel]), need(name, rel) + memory(name, rel), f" {MISSING}.", f" {v}.")
            for group, fs in groups for name, rel, v in common.evenly_spaced(fs, n)]


def sft_recalls(data_dir, world):
    """The known facts (name, relation) that the world's SFT files recall: stage2.jsonl's recall lines ("From
    memory, X's R is V.") and stage1.jsonl's pairs (their prefix, then the right word: the value where it is known)."""
    texts = []
    with open(os.path.join(data_dir, "stage2.jsonl"), encoding="utf-8") as f:
        texts += ["".join(s["text"] for s in json.loads(line)["segments"]) for line in f]
    with open(os.path.join(data_dir, "stage1.jsonl"), encoding="utf-8") as f:
        texts += [r["prefix"] + r["chosen"] for r in map(json.loads, f)]
    text = "\n".join(texts)
    return {(e["name"], rel) for e in world["entities"] if group_of(e) == "known" for rel, v in e["facts"].items()
            if recall(e["name"], rel, v).rstrip("\n") in text}


def linear_probe(x, labels, steps=300):
    """Logistic regression on the rows of x (standardised), fitted with balanced class weights on every other
    row and scored on the rest -> balanced accuracy (0.5: no direction in x separates the labels)."""
    y = torch.tensor([float(v) for v in labels])
    fit, held = torch.arange(0, len(y), 2), torch.arange(1, len(y), 2)
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    w = torch.zeros(x.shape[1] + 1, requires_grad=True)
    weight = torch.where(y[fit] > 0, 0.5 / y[fit].mean(), 0.5 / (1 - y[fit].mean()))
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        z = x[fit] @ w[:-1] + w[-1]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y[fit], reduction="none") * weight).mean()
        (loss + 1e-3 * w[:-1].square().sum()).backward()
        opt.step()
    with torch.no_grad():
        said, truth = (x[held] @ w[:-1] + w[-1]) > 0, y[held] > 0
    return (((said & truth).sum() / truth.sum() + (~said & ~truth).sum() / (~truth).sum()) / 2).item()


def decision_probe(model, tok, cases, steps=300):
    """Does the first decision depend on whether the entity is known? Per split: the share of cases where the
    token that starts the search outscores the one that starts the recall (the fact's own value: "searches"),
    the mean logit margin, and the share where the search's token is the most likely of all ("greedy": what
    greedy decoding writes there); and how well a linear probe finds "known" in the last layer's normed
    state there (linear_probe)."""
    states, margins, greedy = [], [], []
    for split, question, prefix, search, remember in cases:
        head = common.encode_prompt(tok, question)
        a, b = tok.encode(prefix + search), tok.encode(prefix + remember)
        cut = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # the first token the two ways differ in
        ids = torch.tensor([head + a[:cut]], device=next(model.parameters()).device)
        with torch.no_grad():
            h = model(ids, return_hidden=True)[0, -1].float()
            logits = model.lm_head(h.to(model.lm_head.weight.dtype)).float()
        states.append(h.cpu())
        margins.append((logits[a[cut]] - logits[b[cut]]).item())
        greedy.append(int(logits.argmax()) == a[cut])
    splits = [c[0] for c in cases]
    mean = lambda xs, s: sum(v for v, x in zip(xs, splits) if x == s) / splits.count(s)  # noqa: E731
    out = {s: {"cases": splits.count(s), "searches": mean([m > 0 for m in margins], s), "margin": mean(margins, s),
               "greedy": mean(greedy, s)} for s in dict.fromkeys(splits)}
    split_cases = [i for i, s in enumerate(splits) if s != NOT_IN_SFT]  # the probe: known against train and test
    out["linear_probe_balanced_accuracy"] = linear_probe(torch.stack(states)[split_cases],
                                                         [splits[i] == "known" for i in split_cases], steps)
    return out


def format_probe(summary):
    lines = [f"world-model probe: {summary['questions']} questions; actions whose query is not "
             f"'<Name> <relation>': {summary['unparsed']}",
             f"{'entity':<8} {'actions':>7} {'right %':>8} {'wrong %':>8} {'absent %':>8} {'real has fact %':>16}"]
    for group in [g for g in GROUPS if g in summary]:
        g = summary[group]
        n = g["actions"]
        pct = lambda k: f"{100 * g[k] / n:.1f}" if n else "-"  # noqa: E731
        lines.append(f"{group:<8} {n:>7} {pct('right'):>8} {pct('wrong'):>8} {pct('absent'):>8} "
                     f"{pct('real_has_fact'):>16}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint directory, or a stage's --out (its latest checkpoint)")
    ap.add_argument("--data", default="runs/world", help="directory with world.json, corpus.jsonl, <split>.jsonl")
    ap.add_argument("--split", default="dev", help="questions file in --data")
    ap.add_argument("--search", help="corpus JSONL (BM25) or retrieval server URL (default: DATA/corpus.jsonl)")
    ap.add_argument("--limit", type=int, help="probe N questions evenly spaced over the split")
    ap.add_argument("--out", help="per-action JSONL, .summary.json beside it "
                                  "(default runs/eval/<name>-<split>-probe.jsonl)")
    ap.add_argument("--batch-size", type=int, default=16, help="rollouts sampled together")
    ap.add_argument("--copy", type=int, metavar="N",
                    help="instead: teacher-forced copying of N held-out facts out of their pages (copy_probe)")
    ap.add_argument("--recall", type=int, metavar="N",
                    help="instead: teacher-forced recall of N known facts, asked without the tool (recall_cases)")
    ap.add_argument("--decision", type=int, metavar="N",
                    help="instead: the first decision for N facts per entity split (decision_probe)")
    # greedy, the model's best guess: no temperature or top-p
    add_sampling_args(ap, only=("max_new_tokens", "max_actions", "topk", "obs_max_tokens"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    args = common.parse_args(ap, {}, argv)  # on the embedded world: its --topk (meta.json)

    ckpt = checkpoints.resolve_checkpoint(args.ckpt)
    if ckpt is None:
        ap.error(f"--ckpt {args.ckpt}: no checkpoint there (config.json or a 'latest' pointer)")
    world_path = os.path.join(args.data, "world.json")
    if not os.path.isfile(world_path):
        ap.error(f"the probe needs the embedded world's {world_path} (python -m data.build --out {args.data})")
    with open(world_path, encoding="utf-8") as f:
        world = json.load(f)
    name = os.path.basename(os.path.normpath(args.ckpt))
    kind = "copy" if args.copy else "recall" if args.recall else "decision" if args.decision else "probe"
    out = args.out or f"runs/eval/{name}-{args.split if kind in ('probe', 'copy') else kind == 'recall' and 'known' or 'all'}-{kind}.jsonl"
    base = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if args.decision:
        model = Qwen2.from_pretrained(ckpt, device=args.device, dtype=getattr(torch, args.dtype or "float32")).eval()
        sft = all(os.path.isfile(os.path.join(args.data, f)) for f in ("stage1.jsonl", "stage2.jsonl"))
        rehearsed = sft_recalls(args.data, world) if sft else None
        r = decision_probe(model, Tokenizer.from_pretrained(ckpt), decision_cases(world, args.decision, rehearsed))
        with open(base + ".summary.json", "w") as f:
            json.dump({"args": vars(args), "checkpoint": ckpt, "decision": r}, f, indent=1)
        print(f"[probe] {ckpt}: first decision, 'missing' / mean margin (missing - value): "
              + ", ".join(f"{s} {100 * v['searches']:.1f}% / {v['margin']:+.2f} (greedy 'missing' {100 * v['greedy']:.1f}%)"
                          for s, v in r.items() if s in GROUPS + (NOT_IN_SFT,))
              + f"; linear probe for 'known', balanced accuracy {r['linear_probe_balanced_accuracy']:.3f}; "
              f"wrote {base}.summary.json")
        return
    if args.copy or args.recall:
        if args.copy:
            tool = env.make_search_tool(args.search or os.path.join(args.data, "corpus.jsonl"))
            cases, where = copy_cases(world, tool, args.copy, args.split, args.topk), f"out of {args.split} entities' results"
        else:
            cases, where = recall_cases(world, args.recall), "of known entities from memory"
        if not cases:
            ap.error(f"--split {args.split}: {world_path} has no entities in that split (known, train, dev, test)")
        model = Qwen2.from_pretrained(ckpt, device=args.device, dtype=getattr(torch, args.dtype or "float32")).eval()
        r = copy_probe(model, Tokenizer.from_pretrained(ckpt), cases, args.batch_size, tool=bool(args.copy))
        with open(base + ".summary.json", "w") as f:
            json.dump({"args": vars(args), "checkpoint": ckpt, kind: {"split": args.split if args.copy else "known", **r}},
                      f, indent=1)
        print(f"[probe] {ckpt}: writes {r['copied']} of {r['values']} values {where} "
              f"({100 * r['copied'] / max(r['values'], 1):.1f}%); by relation: "
              + ", ".join(f"{rel} {c}/{n}" for rel, (c, n) in r["by_relation"].items()) + f"; wrote {base}.summary.json")
        return
    rows, model, tok = common.load_for_sampling(args, ckpt, args.split, "probe")
    tool = env.make_search_tool(args.search or os.path.join(args.data, "corpus.jsonl"))
    print(f"[probe] search tool: {tool.check()}")  # raises SearchError: no probe on a dead tool
    summary, records = probe(model, tok, rows, world, tool, args.batch_size, **sampling_kwargs(args))
    with open(out, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(base + ".summary.json", "w") as f:
        json.dump({"args": vars(args), "checkpoint": ckpt, "probe": summary}, f, indent=1)
    print(format_probe(summary) + f"\n[probe] wrote {out} and {base}.summary.json")


if __name__ == "__main__":
    main()
