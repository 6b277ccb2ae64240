"""The domain recipes: their configs and shipped samples, key-term overlap, probes asked with the run's system
prompt, and `tunelab init` choosing a domain's recipe from the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from tunelab.config import load_config
from tunelab.data import domains
from tunelab.data.load import load_records
from tunelab.data.records import DataError
from tunelab.eval.key_terms import key_terms, term_overlap
from tunelab.eval.metrics import generation_metrics
from tunelab.plan.init import suggest
from tunelab.probes import forgetting
from tunelab.probes.files import Question, load_questions

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*/*.yaml"))


def test_key_terms_are_rare_words_and_figures() -> None:
    terms = key_terms("Adult acute lymphoblastic leukemia affects the bone Marrow of 6,000 people; BRCA1 "
                      "mutations and Platelets. See a doctor about the disease.")
    assert {"lymphoblastic", "leukemia", "marrow", "6000", "brca1", "mutation", "platelet"} <= terms
    assert not {"bone", "doctor", "disease", "people", "the"} & terms  # common words say nothing specific
    assert key_terms("6000 people") == key_terms("6,000 people")
    assert key_terms("Ask your doctor's nurse about fluids.") == set()  # judged as 'doctor', 'fluid'
    assert key_terms("Steps:\n1. Rest\n2) Drink water\nTake 2 tablets") == {"2"}  # list numbering is no figure


def test_term_overlap_by_hand() -> None:
    ref = "Leukemia is treated with imatinib; 80 percent respond."
    assert term_overlap(ref, ref) == {"key_term_recall": 1.0, "unsupported_terms": 0.0}
    half = term_overlap(ref, "Leukemia is treated with vincristine.")  # kept leukemia; made up vincristine
    assert half["key_term_recall"] == pytest.approx(1 / 3) and half["unsupported_terms"] == pytest.approx(1 / 2)
    assert term_overlap("yes", "maybe so")["key_term_recall"] is None  # nothing to keep: left out of the mean
    assert term_overlap(ref, "I don't know.")["unsupported_terms"] == 0.0  # claims nothing specific
    m = generation_metrics([ref, "yes"], [ref, "no"])
    assert m["key_term_recall"] == 1.0 and m["unsupported_terms"] == 0.0


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_loads_and_its_data_reads_cleanly(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # recipes name their data from the repository root
    cfg = load_config(path)
    for data in (cfg.data.train, cfg.data.validation):
        if data:
            loaded = load_records(data, cfg.data.format, cfg.data.columns, cfg.data.system_prompt)
            assert loaded.records and not loaded.errors, (data, loaded.errors[:3])
    for probe_file in cfg.eval.probes.questions:
        assert load_questions([probe_file], own=True)
    data = ROOT / cfg.data.train
    assert any((d / "NOTICE.md").is_file() for d in [data, *data.parents][:3]), \
        f"{cfg.data.train}: ship the data's source and licence beside it"


def test_probes_asked_with_the_run_system_prompt(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "Chest pain?", "answers": ["doctor"], "topic": "referral", "with_system_prompt": '
                 'true}\n{"question": "2+2?", "answers": ["4"]}\n')
    kept, plain = load_questions([f], own=True)
    assert kept.system and kept.own and not plain.system
    assert forgetting._messages(kept, "See a doctor.")[0] == {"role": "system", "content": "See a doctor."}
    assert forgetting._messages(plain, "See a doctor.") == [{"role": "user", "content": "2+2?"}]
    assert forgetting._messages(kept, None) == [{"role": "user", "content": "Chest pain?"}]
    f.write_text('{"question": "Chest pain?", "answers": ["doctor"], "with_system_prompt": "yes"}\n')
    with pytest.raises(DataError, match=f"{f}:1: .*with_system_prompt"):
        load_questions([f])


def test_a_lost_rule_warns_on_its_own_topic() -> None:
    shipped = [Question(f"s:{i}", f"general {i}", ["x"]) for i in range(20)]
    own = [Question(f"o:{i}", f"chest pain {i}", ["doctor"], "referral", system=True, own=True) for i in range(4)]
    qs = shipped + own

    def side(general: bool, referral: list[bool]) -> dict:
        correct = [general] * 20 + referral
        return {"qa_accuracy": sum(correct) / len(correct), "perplexity": 10.0, "replies": [""] * 24,
                "correct": correct}

    out = forgetting.compare({"base": side(True, [True] * 4), "tuned": side(True, [True, False, False, False])},
                             qs, max_accuracy_drop=0.1, max_perplexity_rise=0.2)
    assert out["by_topic"] == {"referral": {"questions": 4, "base": 1.0, "tuned": 0.25}}
    assert out["qa_drop"] == pytest.approx(3 / 24) and any("'referral'" in w for w in out["warnings"])


def _medical_rows() -> list[dict]:
    return [json.loads(line) for line in (ROOT / "src/tunelab/examples/medical/train/medquad.jsonl").open()][:60]


def test_init_picks_the_medical_recipe(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in _medical_rows()])
    s = suggest(str(tmp_path / "qa.jsonl"))
    assert s.kind == "chat" and s.value("data.columns") == {"instruction": "question", "output": "answer"}
    assert "clinician" in s.value("data.system_prompt")
    assert s.value("eval.probes") == {"questions": [domains.referral_questions()], "max_new_tokens": 96}
    assert any("not a medical device" in n for n in s.notes) and any("configs/medical" in n for n in s.notes)
    cfg = s.config()
    assert cfg.eval.probes.questions and load_questions(cfg.eval.probes.questions, own=True)


def test_init_names_the_legal_and_prose_recipes_and_leaves_other_data_alone(tmp_path: Path) -> None:
    clauses = [("This Agreement shall be governed by the laws of the State of New York.", "Governing Law"),
               ("Neither party may assign this Agreement without the prior written consent of the other party.",
                "Anti-Assignment"),
               ("Licensee shall maintain insurance with limits of no less than $1,000,000 per occurrence.",
                "Insurance")] * 10
    with (tmp_path / "clauses.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *clauses])
    legal = suggest(str(tmp_path / "clauses.csv"))
    assert any("configs/legal" in n for n in legal.notes) and "clause" in legal.value("data.system_prompt")
    post = " ".join(["We launched a new service for our customers this spring, and here is what we learned."] * 12)
    write_jsonl(tmp_path / "posts.jsonl", [{"text": post}] * 5)
    prose = suggest(str(tmp_path / "posts.jsonl"))
    assert prose.kind == "completion" and any("configs/marketing" in n for n in prose.notes)
    assert prose.value("data.too_long") == "split" and prose.value("model.max_length") <= 512
    long_answers = [{"prompt": "Tell me about our launch.", "completion": post}] * 5  # not plain text: no prose
    write_jsonl(tmp_path / "qa_long.jsonl", long_answers)
    assert suggest(str(tmp_path / "qa_long.jsonl")).value("data.too_long") is None
    with (ROOT / "src/tunelab/examples/banking77/train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:300]
    assert domains.detect(rows, "classification") is None
    assert domains.detect([{"messages": [{"role": "user", "content": "my card is lost"}]}], "chat") is None


def test_long_texts_split_into_pieces_that_stay_on_one_side() -> None:
    from tunelab.data.load import Loaded
    from tunelab.data.records import Record
    from tunelab.data.report import encode_loaded
    from tunelab.data.split import split_validation
    from tunelab.data.templates import Encoded

    def encode(rec: Record) -> Encoded:  # one token per word
        ids = list(range(len(rec.text.split())))
        return Encoded(ids, list(ids))

    loaded = Loaded(records=[Record(f"posts.jsonl:{i}", "text", text="w " * n) for i, n in enumerate([25, 8, 21])],
                    rows=3)
    examples, rep = encode_loaded(loaded, "posts.jsonl", encode, max_length=10, too_long="split")
    assert [len(e.input_ids) for e in examples] == [10, 10, 5, 8, 10, 10]  # 1 token left over: nothing to learn
    assert rep.split_rows == 2 and rep.truncated == 0 and rep.completion_tokens == 53 and not rep.warnings
    assert rep.valid_rows == 3  # rows, not pieces
    for seed in range(5):
        train, val = split_validation(examples, 0.34, seed, lambda e: e.record.where)
        assert {e.record.where for e in train}.isdisjoint({e.record.where for e in val}) and val
    chat = Loaded(records=[Record("c.jsonl:1", "completion", prompt="q", completion="w " * 30)], rows=1)
    _, rep = encode_loaded(chat, "c.jsonl", lambda r: Encoded(list(range(30)), list(range(30))), max_length=10,
                           too_long="split")
    assert rep.truncated == 1 and "plain-text rows only" in rep.warnings[0].message


def test_the_caveat_of_a_medical_run_reaches_the_model_card_and_the_served_model(tmp_path: Path) -> None:
    from tunelab.runs import RunDir
    from tunelab.runs.layout import SUMMARY
    from tunelab.serve.models import AdapterSource

    RunDir(tmp_path).write_json(SUMMARY, {"status": "completed", "domain": {"name": "medical",
                                                                           "caveat": domains.MEDICAL_CAVEAT}})
    assert AdapterSource(tmp_path / "adapter", run=tmp_path).info()["caveat"] == domains.MEDICAL_CAVEAT
    texts = [domains.record_text(r) for r in load_records(ROOT / "src/tunelab/examples/medical/validation.jsonl",
                                                           columns={"instruction": "question", "output": "answer"},
                                                           ).records]
    assert domains.detect_texts(texts, "chat").caveat == domains.MEDICAL_CAVEAT
    assert domains.detect_texts(texts, "classification") is None  # question types: not a medical answer
    support = load_records(ROOT / "src/tunelab/examples/banking77/train.csv", columns={"text": "text", "label":
                                                                                     "category"}).records[:200]
    assert domains.detect_texts([domains.record_text(r) for r in support], "chat") is None
