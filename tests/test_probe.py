"""probe.py: at each of the agent's real actions, the model's own observation from the same prefix, judged
against the world's fact; on a tiny world, with the agent's actions scripted (tests/test_eval.py's Script)."""
import json

from data.trajectories import need, read, recall
from data.world import fact_sentence, phrase
from env import TAGS

import probe
from sample import sample
from test_eval import Script, bm25, chain, ending, model, question, rows, tok, world, world_dir  # noqa: F401 (fixtures)


def test_probe_judges_the_predicted_fact_at_each_action(tok, model, rows, world, bm25):
    row = question(rows, world, hops=1)
    (name, rel, value, known), = chain(world, row)
    plan = [f"{need(name, rel)} I will search for it. {TAGS.search_open} {phrase(name, rel)} {TAGS.search_close}",
            ending(value)]
    summary, recs = probe.probe(model, tok, [row], world, bm25, topk=1, obs_max_tokens=300,
                                logits_processor=Script(tok, {row["question"]: plan}))
    entity = next(e for e in world["entities"] if e["name"] == name)
    group = probe.group_of(entity)
    assert group == entity.get("split", "unknown") and not known
    assert summary["questions"] == 1 and summary["unparsed"] == 0 and set(summary) == {"questions", "unparsed", group}
    g = summary[group]
    assert g["actions"] == 1 and g["real_has_fact"] == 1 and g["right"] + g["wrong"] + g["absent"] == 1
    rec, = recs
    assert rec["fact"] == fact_sentence(name, rel, value) and rec["query"] == phrase(name, rel)
    assert rec["predicted"] and rec["predicted"] not in rec["real"]  # the random model wrote its own
    assert group in probe.format_probe(summary)
    # the prediction is exactly what the agent, in sim mode, writes at that action (the same greedy model)
    sim = sample(model, tok, [probe.common.encode_prompt(tok, row["question"])], mode="sim", temperature=0.0,
                 max_new_tokens=600, obs_max_tokens=300, logits_processor=Script(tok, {row["question"]: plan}))[0]
    assert rec["predicted"] == tok.decode([t for t, m in zip(sim.completion, sim.sim_obs_mask) if m])


def test_judge_and_parse_query_by_hand(world):
    e = next(e for e in world["entities"] if e["facts"])
    rel, value = next(iter(e["facts"].items()))
    name, fact = e["name"], fact_sentence(e["name"], rel, value)
    assert probe.judge(f" result 1: x. {fact} y", fact, name, rel) == "right"
    assert probe.judge(f" result 1: {phrase(name, rel)} is Zzz.", fact, name, rel) == "wrong"
    assert probe.judge(" result 1: nothing", fact, name, rel) == "absent"
    assert probe.parse_query(phrase(name, rel), world) == (e, rel) and probe.parse_query("nobody home", world) is None
    assert probe.group_of({"known": True}) == "known" and probe.group_of({"known": False}) == "unknown"


def test_cli_writes_records_and_summary(tmp_path, tok, model, world_dir):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(str(ckpt))
    tok.save(str(ckpt))
    out = tmp_path / "p.jsonl"
    probe.main(["--ckpt", str(ckpt), "--data", world_dir, "--limit", "3", "--max-new-tokens", "24", "--topk", "1",
                "--obs-max-tokens", "16", "--out", str(out), "--device", "cpu"])
    summary = json.load(open(tmp_path / "p.summary.json"))
    assert summary["args"]["split"] == "dev" and summary["probe"]["questions"] <= 3 and out.exists()


def test_copy_cases_cut_each_reading_line_before_its_value(world, world_dir):
    """One case per fact of the split's entities: the one-hop question, its search, the tool's result for that
    query and the reading line cut before the value; recall cases: the known facts, the recall line cut so."""
    tool = probe.env.make_search_tool(f"{world_dir}/corpus.jsonl")
    facts = [(e, r, v) for e in world["entities"] if probe.group_of(e) == "test" for r, v in e["facts"].items()]
    cases = probe.copy_cases(world, tool, 1000, "test", topk=2)
    assert len(cases) == len(facts) > 0 and len(probe.copy_cases(world, tool, 3, "test")) == 3
    for (e, rel, value), (question, text, said, relation) in zip(facts, cases):
        assert question == f"What is {phrase(e['name'], rel)}?" and said == str(value) and relation == rel
        observation = probe.env.format_observation(tool.search([phrase(e["name"], rel)], 2)[0])
        assert text == need(e["name"], rel) + f" I will search for it. {TAGS.search_open} {phrase(e['name'], rel)} " \
            f"{TAGS.search_close}" + observation + read(e["name"], rel, value)[:-len(f" {value}.\n")]
    known = [(e, r, v) for e in world["entities"] if e["known"] for r, v in e["facts"].items()]
    recalled = probe.recall_cases(world, 1000)
    assert len(recalled) == len(known) > 0
    for (e, rel, value), (question, text, said, relation) in zip(known, recalled):
        assert text == need(e["name"], rel) + recall(e["name"], rel, value)[:-len(f" {value}.\n")] and said == str(value)


def test_copy_probe_counts_values_whose_every_token_is_the_best_guess(tok, world, world_dir):
    """An oracle that puts each sequence's next token first copies every value; the same oracle wrong on a
    value's last token copies none. Without the tool (recall cases) the prompt has no instruction."""
    import torch
    tool = probe.env.make_search_tool(f"{world_dir}/corpus.jsonl")
    cases = probe.copy_cases(world, tool, 5, "test")
    seqs = [probe.common.encode_prompt(tok, q) + tok.encode(t + " " + v) for q, t, v, _ in cases]

    class Oracle(torch.nn.Module):
        def __init__(self, miss_last):
            super().__init__()
            self.w, self.miss_last = torch.nn.Parameter(torch.zeros(1)), miss_last

        def forward(self, x):
            out = torch.zeros(*x.shape, tok.vocab_size)
            for b, row in enumerate(x.tolist()):
                seq = next(s for s in seqs if s[:-1] == row[:len(s) - 1])
                for t in range(len(seq) - 1):
                    out[b, t, seq[t + 1]] = 1.0
                if self.miss_last:
                    out[b, len(seq) - 2] = 0.0
                    out[b, len(seq) - 2, (seq[-1] + 1) % tok.vocab_size] = 1.0
            return out

    right, wrong = (probe.copy_probe(m, tok, cases, batch_size=2) for m in (Oracle(False), Oracle(True)))
    assert (right["values"], right["copied"], wrong["values"], wrong["copied"]) == (5, 5, 5, 0)
    rels = {rel for *_, rel in cases}
    assert right["by_relation"] == {r: [sum(c[3] == r for c in cases)] * 2 for r in sorted(rels)}
    assert wrong["by_relation"] == {r: [0, sum(c[3] == r for c in cases)] for r in sorted(rels)}
    recalled = probe.recall_cases(world, 3)
    seqs = [probe.common.encode_prompt(tok, q, tool=False) + tok.encode(t + " " + v) for q, t, v, _ in recalled]
    assert probe.copy_probe(Oracle(False), tok, recalled, tool=False)["copied"] == 3


def test_cli_copy_and_recall_write_their_summaries(tmp_path, tok, model, world_dir):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(str(ckpt))
    tok.save(str(ckpt))
    probe.main(["--ckpt", str(ckpt), "--data", world_dir, "--split", "test", "--copy", "4", "--out",
                str(tmp_path / "c.jsonl"), "--device", "cpu"])
    copy = json.load(open(tmp_path / "c.summary.json"))["copy"]
    assert copy["split"] == "test" and copy["values"] == 4 and 0 <= copy["copied"] <= 4
    probe.main(["--ckpt", str(ckpt), "--data", world_dir, "--recall", "3", "--out", str(tmp_path / "r.jsonl"),
                "--device", "cpu"])
    recall_ = json.load(open(tmp_path / "r.summary.json"))["recall"]
    assert recall_["split"] == "known" and recall_["values"] == 3 and 0 <= recall_["copied"] <= 3


def test_linear_probe_finds_a_direction_only_where_there_is_one():
    """Labels that a coordinate decides: balanced accuracy near 1; labels independent of the states: near 0.5."""
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    assert probe.linear_probe(x, (x[:, 3] > 0).tolist()) > 0.95
    coin = (torch.rand(400, generator=g) < 0.3).tolist()
    assert abs(probe.linear_probe(x, coin) - 0.5) < 0.1


def test_decision_probe_margin_is_the_two_ways_first_token(tok, model, world):
    """One case per split; each margin is the logit of "missing" minus the value's first token, read off a plain
    forward pass of the prompt and the decision line; searches is the share with margin > 0."""
    import torch
    cases = probe.decision_cases(world, 1)
    assert [c[0] for c in cases] == ["known", "train", "test"]
    out = probe.decision_probe(model, tok, cases * 4, steps=5)
    for split, question, prefix, search, remember in cases:
        a, b = tok.encode(prefix + search), tok.encode(prefix + remember)
        cut = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        assert tok.decode(a[cut:]).strip() == "missing." and tok.decode(b[cut:]).strip()
        ids = torch.tensor([probe.common.encode_prompt(tok, question) + a[:cut]])
        with torch.no_grad():
            logits = model(ids)[0, -1]
        margin = (logits[a[cut]] - logits[b[cut]]).item()
        assert abs(out[split]["margin"] - margin) < 1e-4 and out[split]["searches"] == float(margin > 0)
        assert out[split]["greedy"] == float(int(logits.argmax()) == a[cut])
        assert out[split]["cases"] == 4
    assert 0.0 <= out["linear_probe_balanced_accuracy"] <= 1.0


def test_sft_recalls_are_the_known_facts_an_sft_file_recalls(tmp_path):
    """A known fact is rehearsed when stage2.jsonl recalls it or a stage-1 pair's right word is its value; a
    "missing" line, a read line or another entity's recall does not count. decision_cases then adds the known
    facts that are not rehearsed, and only those, as their own group."""
    people = {"Ab Cd": {"birth year": 1500, "employer": "Ef Gh"}, "Ij Kl": {"birth year": 1600}}
    world = {"entities": [{"name": n, "type": "person", "split": "known", "known": True, "facts": f}
                          for n, f in people.items()]
             + [{"name": "Mn Op", "type": "person", "split": "train", "known": False, "facts": {"birth year": 1700}}]}
    lines = [recall("Ab Cd", "birth year", 1500), " From memory, Ij Kl's birth year is missing.\n",
             read("Ij Kl", "birth year", 1600), recall("Mn Op", "birth year", 1700)]
    (tmp_path / "stage2.jsonl").write_text(json.dumps({"segments": [{"text": t, "tool": False} for t in lines]}) + "\n")
    pair = {"prefix": "I need Ab Cd's employer." + probe.memory("Ab Cd", "employer"), "chosen": " Ef Gh.",
            "rejected": " missing.", "direction": "answer"}
    (tmp_path / "stage1.jsonl").write_text(json.dumps(pair) + "\n")
    rehearsed = probe.sft_recalls(str(tmp_path), world)
    assert rehearsed == {("Ab Cd", "birth year"), ("Ab Cd", "employer")}
    cases = probe.decision_cases(world, 10, rehearsed)
    assert [c[0] for c in cases] == ["known"] * 3 + ["train", probe.NOT_IN_SFT]
    assert cases[-1][2].endswith(probe.memory("Ij Kl", "birth year")) and cases[-1][4] == " 1600."
