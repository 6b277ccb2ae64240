"""`data synth` in parts: parsing teacher replies, chunking documents, the filters, and the teacher itself (cache,
concurrency, timeouts, garbage) against a fake OpenAI-compatible server that the real openai client reaches over
HTTP (tests/data/synth/fake_teacher.py, a process of its own)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import fake_teacher, teacher_calls
from tunelab.data.load import load_records
from tunelab.data.records import DataError
from tunelab.data.synth.documents import Document, DocumentError, chunk, read_documents
from tunelab.data.synth.examples import read_seeds
from tunelab.data.synth.filters import grounded, novel, qa_problem, utterance_problem
from tunelab.data.synth.parse import ParseError, parse_label, parse_pair, parse_pairs, parse_utterances
from tunelab.data.synth.run import MANIFEST, OUTPUT, SynthError, SynthOptions, synthesize
from tunelab.data.synth.teacher import CACHE_FILE, Cache, Request, Teacher, TeacherError, TeacherSettings

DATA = Path(__file__).parents[1] / "data" / "synth"
SEEDS_CHAT, SEEDS_LABELS, DOCS = DATA / "seeds_chat.jsonl", DATA / "seeds_labels.jsonl", DATA / "docs"






@pytest.fixture(scope="module")
def good() -> Iterator[str]:
    with fake_teacher("good") as url:
        yield url


# --- parsing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    '{"question": "Can I pay by card?", "answer": "Yes, every card."}',
    'Sure! Here is one:\n```json\n{"question": "Can I pay by card?", "answer": "Yes, every card."}\n```\nEnjoy.',
    "Q: Can I pay by card?\nA: Yes, every card.",
    "**Question:** Can I pay by card?\n**Answer:** Yes, every card.",
    '{"Question": "Can I pay by card?", "Answer": "Yes, every card.", "type": "faq"}',
    # cut short by max_tokens after both strings were complete
    '{"question": "Can I pay by card?", "answer": "Yes, every card.", "notes": "and then the model went on an',
])
def test_a_question_answer_pair_is_read_from_what_teachers_write(reply: str) -> None:
    assert parse_pair(reply) == ("Can I pay by card?", "Yes, every card.")


@pytest.mark.parametrize("reply", ["", None, "Lorem ipsum dolor sit amet.", '{"text": "no pair here"}',
                                   '[1, 2, 3]', '{"question": "only half'])
def test_garbage_is_a_parse_error_not_a_crash(reply: str | None) -> None:
    with pytest.raises(ParseError):
        parse_pair(reply)


def test_several_pairs_from_a_list_or_an_object_holding_one() -> None:
    listed = '[{"question": "a b c?", "answer": "1"}, {"question": "d e f?", "answer": "2"}, {"oops": 1}]'
    assert parse_pairs(listed) == [("a b c?", "1"), ("d e f?", "2")]
    assert parse_pairs('{"pairs": ' + listed + "}") == [("a b c?", "1"), ("d e f?", "2")]
    assert parse_pairs("Q: one?\nA: yes\n\nQ: two?\nA: no") == [("one?", "yes"), ("two?", "no")]


def test_utterances_from_json_or_lines() -> None:
    assert parse_utterances('["where is my card", " card late "]') == ["where is my card", "card late"]
    assert parse_utterances('```json\n{"texts": ["a", "b"]}\n```') == ["a", "b"]
    assert parse_utterances('Here are new texts:\n1. "where is my card"\n2) card late\n- still waiting') == [
        "where is my card", "card late", "still waiting"]
    with pytest.raises(ParseError):
        parse_utterances("Here you go:\n")


def test_a_label_is_read_when_exactly_one_is_named() -> None:
    labels = ["card_arrival", "lost_card", "card"]
    assert parse_label("lost_card", labels) == "lost_card"
    assert parse_label("Label: Lost card.", labels) == "lost_card"
    assert parse_label('{"label": "card_arrival"}', labels) == "card_arrival"
    assert parse_label("This is about a lost card, clearly.", labels) == "lost_card"  # not also "card"
    for unclear in ("card_arrival or lost_card", "no idea", ""):
        with pytest.raises(ParseError):
            parse_label(unclear, labels)


def test_seed_rows_in_each_format(tmp_path: Path) -> None:
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Name a colour.", "input": "", "output": "Blue."}) + "\n")
    completion = tmp_path / "completion.jsonl"
    completion.write_text(json.dumps({"prompt": "2 + 2 =", "completion": " 4"}) + "\n")
    assert read_seeds(alpaca).pairs == [("Name a colour.", "Blue.", f"{alpaca}:1")]
    assert read_seeds(completion).pairs == [("2 + 2 =", " 4", f"{completion}:1")]
    intents = tmp_path / "intents.csv"
    intents.write_text("utterance,category\nwhere is my card,card_arrival\nI lost it,lost_card\n")
    seeds = read_seeds(intents, columns={"text": "utterance", "label": "category"})
    assert seeds.kind == "labels" and seeds.by_label == {"card_arrival": [("where is my card", f"{intents}:2")],
                                                         "lost_card": [("I lost it", f"{intents}:3")]}
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "just prose"}) + "\n")
    with pytest.raises(DataError, match="plain text rows can't seed"):
        read_seeds(text)


# --- documents ---------------------------------------------------------------------------------------

def test_chunks_keep_paragraphs_whole_and_overlap() -> None:
    paras = [" ".join(f"p{i}w{j}" for j in range(30)) for i in range(6)]
    chunks = chunk(Document("a.md", "\n\n".join(paras)), words=70, overlap=35)
    assert [c.id for c in chunks] == [f"a.md#{i}" for i in range(len(chunks))]
    for c in chunks:  # whole paragraphs only
        assert all(p in paras for p in c.text.split("\n\n"))
        assert len(c.text.split()) <= 70
    for a, b in zip(chunks, chunks[1:], strict=False):  # each starts with the last paragraph of the one before
        assert b.text.split("\n\n")[0] == a.text.split("\n\n")[-1]
    assert {p for c in chunks for p in c.text.split("\n\n")} == set(paras)
    # no overlap asked: each paragraph once
    assert sum(len(c.text.split("\n\n")) for c in chunk(Document("a", "\n\n".join(paras)), 70, 0)) == 6


def test_a_paragraph_longer_than_a_chunk_is_cut_at_sentences() -> None:
    text = " ".join(f"Sentence {i} has exactly six words." for i in range(40))  # one paragraph, 240 words
    chunks = chunk(Document("long.txt", text), words=50, overlap=0)
    assert len(chunks) >= 5 and all(len(c.text.split()) <= 50 for c in chunks)
    assert all(c.text.startswith("Sentence") and c.text.endswith(".") for c in chunks)


def test_documents_of_every_kind_are_read_as_text(tmp_path: Path) -> None:
    docs, skipped = read_documents(DOCS)
    by_name = {d.name: d.text for d in docs}
    assert sorted(by_name) == ["kayaks.pdf", "refunds.md", "shipping.txt", "warranty.html"] and not skipped
    assert "35 euros per day" in by_name["kayaks.pdf"]
    html = by_name["warranty.html"]
    assert "two-year warranty against defects" in " ".join(html.split())  # the <b> stays inside its sentence
    assert "do not read this script" not in html and "font-family" not in html
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (tmp_path / "ok.txt").write_text("Plain words.")
    docs, skipped = read_documents(tmp_path)
    assert [d.name for d in docs] == ["ok.txt"] and "broken.pdf" in skipped
    (tmp_path / "ok.txt").unlink()
    with pytest.raises(DocumentError, match="no readable"):
        read_documents(tmp_path)


# --- filters -----------------------------------------------------------------------------------------

def test_consistency_of_question_answer_pairs() -> None:
    assert qa_problem("Where can I find my IBAN?", "On the first page of the app.") is None
    assert qa_problem("Is the capital Paris?", "Paris") is None  # short answers may reuse the question's words
    assert qa_problem("", "x") == "empty_question"
    assert qa_problem("el", "...is") == "question_too_short"
    assert qa_problem("Where can I find my IBAN?", "  ") == "empty_answer"
    assert qa_problem("Where can I find my IBAN?", "Where can I find my IBAN?") == "repeats_question"
    assert qa_problem("Where can I find my IBAN?", "x" * 50, max_chars=40) == "answer_too_long"


def test_groundedness_counts_the_answers_content_words_in_the_chunk() -> None:
    chunk_text = "A kayak costs 35 euros per day, paddles and life jackets included."
    assert grounded("It costs 35 euros a day with paddles.", chunk_text) == 1.0
    assert grounded("Marco Polo founded it in Venice in 1271.", chunk_text) is None
    assert grounded("...", chunk_text) is None  # nothing in it to check


def test_diversity_drops_near_copies_of_seeds_and_of_each_other() -> None:
    seeds = ["How do I order a new debit card?", "Can I change my PIN online?"]
    new = ["how do I order a new debit card", "What is the daily cash withdrawal limit?",
           "What is the daily cash withdrawal limit ?", "Do you offer student accounts?"]
    assert novel(new, seeds, 0.8) == ["near_seed", None, "near_duplicate", None]


def test_utterances_that_are_not_inputs() -> None:
    labels = ["lost_card", "exchange_rate"]
    assert utterance_problem("I can't find my card", labels) is None
    assert utterance_problem("balance", labels) is None
    for junk in ("exchange_rate", "Lost card", "found_a_dusty_remover", 'text": "lost_card', "{card}"):
        assert utterance_problem(junk, labels) == "not_an_utterance", junk


# --- the teacher -------------------------------------------------------------------------------------

def _requests(n: int) -> list[Request]:
    return [Request([{"role": "user", "content": f"question {i}"}], 0.9, 32, i) for i in range(n)]


def test_the_cache_answers_a_resumed_run_without_asking_again(good: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path / CACHE_FILE)
    settings = TeacherSettings(base_url=good, model="fake-teacher", concurrency=3)
    before = teacher_calls(good)
    first = Teacher(settings, cache).ask(_requests(4))  # an interrupted run: 4 of 10 done
    assert teacher_calls(good) - before == 4 and all(a.text and not a.cached for a in first)
    teacher = Teacher(settings, cache)
    seen = []
    answers = teacher.ask(_requests(10), seen.append)
    assert teacher_calls(good) - before == 10  # only the 6 not asked before
    assert [a.request.index for a in answers] == list(range(10))  # in request order, whatever finished first
    assert [a.cached for a in answers] == [True] * 4 + [False] * 6 and len(seen) == 10
    assert teacher.tally.to_dict() == {"requested": 10, "answered": 10, "cache_hits": 4, "failed": {}}
    assert [a.text for a in answers[:4]] == [a.text for a in first]
    # another model, or other sampling, is another request
    Teacher(TeacherSettings(base_url=good, model="other"), cache).ask(_requests(1))
    assert teacher_calls(good) - before == 11
    cache.close()


def test_the_model_defaults_to_the_first_the_teacher_lists(good: str, tmp_path: Path) -> None:
    assert Teacher(TeacherSettings(base_url=good), Cache(tmp_path / "c.sqlite")).model == "fake-teacher"


def test_requests_that_time_out_are_skipped_and_counted(tmp_path: Path) -> None:
    with fake_teacher("someslow", "--delay", "3") as url:
        t = Teacher(TeacherSettings(base_url=url, model="m", timeout=0.5, max_retries=0, concurrency=6),
                    Cache(tmp_path / CACHE_FILE))
        answers = t.ask(_requests(6))
    assert [a.text is None for a in answers] == [i % 3 == 1 for i in range(6)]
    assert t.tally.failed == {"timed out after 0.5 s (0 retries)": 2} and t.tally.answered == 4


@pytest.mark.parametrize(("mode", "message"), [
    ("slow", "the first 3 requests all failed, the last with: timed out after 0.3 s"),
    ("badshape", "a reply without a message"),
    ("error", "HTTP 500"),
])
def test_a_teacher_that_never_answers_stops_the_run_early(mode: str, message: str, tmp_path: Path) -> None:
    with fake_teacher(mode, "--delay", "2") as url:
        t = Teacher(TeacherSettings(base_url=url, model="m", timeout=0.3, max_retries=0, concurrency=2),
                    Cache(tmp_path / CACHE_FILE))
        with pytest.raises(TeacherError, match=message) as exc:
            t.ask(_requests(20))
        assert teacher_calls(url) < 20  # it stopped instead of waiting for every request
    assert url.removesuffix("/v1") in str(exc.value)


def test_an_unreachable_teacher_says_how_to_start_one(tmp_path: Path) -> None:
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TeacherError, match=r"unreachable: start one with `tunelab serve` or give --base-url"):
        Teacher(TeacherSettings(base_url=url, model="m", max_retries=0), Cache(tmp_path / "c")).ask(_requests(2))
    with pytest.raises(TeacherError, match="as --model was not given"):
        _ = Teacher(TeacherSettings(base_url=url, max_retries=0), Cache(tmp_path / "c")).model
    # a re-run after the teacher is gone: the model its cached replies came from
    cache = Cache(tmp_path / "c")
    cache.put("k", "fake-teacher", _requests(1)[0], "reply")
    assert Teacher(TeacherSettings(base_url=url, max_retries=0), cache).model == "fake-teacher"


# --- whole runs --------------------------------------------------------------------------------------

def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / OUTPUT).read_text().splitlines()]


def test_rows_from_chat_seeds_carry_provenance_and_read_back(good: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = synthesize(out, TeacherSettings(base_url=good), SynthOptions(n=12), seeds=SEEDS_CHAT)
    rows = _rows(out)
    # the canned teacher copies a seed once (5), repeats a question once (7); 9 is fenced and 3 is "Q:/A:" text
    assert s["dropped"] == {"near_seed": 1, "repeats_question": 1} and s["kept"] == len(rows) == 10
    assert s["parsed"] == 12 and s["requests"] == 12 and s["cache_hits"] == 0 and s["check"]["ok"]
    assert json.loads((out / MANIFEST).read_text())["kept"] == 10
    for row in rows:
        p = row["tunelab_synth"]
        assert p["teacher"] == {"base_url": good, "model": "fake-teacher"} and p["mode"] == "examples"
        assert len(p["prompt_id"]) == 16 and len(p["seeds"]) == 3
        assert all(w.startswith(f"{SEEDS_CHAT}:") for w in p["seeds"])
        # the seeds' shared system prompt, then the new question and answer
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert "Do you offer student accounts?" in {r["messages"][1]["content"] for r in rows}  # from "Q:/A:" text
    loaded = load_records(out / OUTPUT)  # provenance is an extra key every reader ignores
    assert not loaded.problems and len(loaded.records) == 10 and loaded.formats == {str(out / OUTPUT): "chat"}
    # run again: nothing asked, the same rows
    before = teacher_calls(good)
    again = synthesize(out, TeacherSettings(base_url=good), SynthOptions(n=12), seeds=SEEDS_CHAT)
    assert teacher_calls(good) == before and again["cache_hits"] == 12 and _rows(out) == rows


def test_classification_seeds_are_relabelled_and_capped_per_label(good: str, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    s = synthesize(out, TeacherSettings(base_url=good), SynthOptions(per_label=4), seeds=SEEDS_LABELS)
    rows = _rows(out)
    assert s["mode"] == "labels" and s["check"]["labels"] == {"card_arrival": 4, "exchange_rate": 4, "lost_card": 4}
    # the fake teacher labels "report a missing card" (lost_card) as card_arrival the second time
    assert s["dropped"]["relabel_disagrees"] == 1 and "report a missing card" not in {r["text"] for r in rows}
    assert s["candidates"] == 15 and s["phases"]["relabel"]["requested"] == 15  # 3 labels x 5 asked, all new
    assert all(r["tunelab_synth"]["relabel"] == r["label"] for r in rows)
    assert not load_records(out / OUTPUT, "classification").problems


class StubClassifier:
    """Stands in for a trained classifier (`--relabel-with`): labels by keywords, and gets one of the fake
    teacher's card_arrival utterances wrong on purpose."""

    labels = ["card_arrival", "exchange_rate", "lost_card"]

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> list[str]:
        self.seen += texts
        return ["exchange_rate" if "rate" in t or "conversion" in t else
                "lost_card" if any(w in t for w in ("lost", "stolen", "find", "fell", "posted")) else
                "card_arrival" for t in texts]

    def describe(self) -> dict[str, str]:
        return {"kind": "model", "model": "stub"}


def test_a_model_relabels_instead_of_the_teacher(good: str, tmp_path: Path) -> None:
    out, stub = tmp_path / "labels", StubClassifier()
    before = teacher_calls(good)
    s = synthesize(out, TeacherSettings(base_url=good), SynthOptions(per_label=4), seeds=SEEDS_LABELS, relabel=stub)
    rows = _rows(out)
    assert teacher_calls(good) - before == 3 and "relabel" not in s["phases"]  # the teacher only wrote the utterances
    assert len(stub.seen) == 15  # every new utterance, once
    assert s["relabel"]["by"] == {"kind": "model", "model": "stub"}
    assert s["relabel"]["rows"] == 15 and s["relabel"]["agreed"] == 13
    # the stub drops "has my card been posted yet"; it agrees with "report a missing card" that the teacher drops
    # the second time, so the model's word counts, not the teacher's
    assert s["dropped"]["relabel_disagrees"] == 2
    texts = {r["text"] for r in rows}
    assert "has my card been posted yet" not in texts and "report a missing card" not in texts
    assert all(r["tunelab_synth"]["relabel"] == r["label"] for r in rows) and s["check"]["ok"]
    assert json.loads((out / MANIFEST).read_text())["relabel"]["by"]["model"] == "stub"
    # the teacher's own relabelling is recorded too
    teacher_run = synthesize(tmp_path / "t", TeacherSettings(base_url=good), SynthOptions(per_label=4),
                             seeds=SEEDS_LABELS)
    assert teacher_run["relabel"]["by"] == {"kind": "teacher", "base_url": good, "model": "fake-teacher"}


def test_the_teacher_check_counts_what_the_teacher_would_keep_and_drops_nothing(good: str, tmp_path: Path) -> None:
    s = synthesize(tmp_path / "o", TeacherSettings(base_url=good), SynthOptions(per_label=4, teacher_check=100),
                   seeds=SEEDS_LABELS, relabel=StubClassifier())
    # all 15 candidates sampled; the teacher drops "report a missing card", the stub that and one more
    assert s["relabel"]["teacher_check"] == {"rows": 15, "teacher_agrees": 14, "teacher_unclear": 0,
                                             "model_agrees": 13, "both_agree": 13}
    assert s["phases"]["teacher_check"]["requested"] == 15 and s["dropped"]["relabel_disagrees"] == 2
    small = synthesize(tmp_path / "o", TeacherSettings(base_url=good), SynthOptions(per_label=4, teacher_check=4),
                       seeds=SEEDS_LABELS, relabel=StubClassifier())
    assert small["relabel"]["teacher_check"]["rows"] == 4 and small["cache_hits"] >= 3


def test_a_relabelling_model_must_fit_the_seeds(tmp_path: Path) -> None:
    stub = StubClassifier()
    stub.labels = ["card_arrival", "lost_card"]  # type: ignore[misc]
    with pytest.raises(SynthError, match=r"labels the relabelling model doesn't know: \['exchange_rate'\]"):
        synthesize(tmp_path / "a", TeacherSettings(), SynthOptions(), seeds=SEEDS_LABELS, relabel=stub)
    with pytest.raises(SynthError, match="only for classification seeds"):
        synthesize(tmp_path / "b", TeacherSettings(), SynthOptions(), seeds=SEEDS_CHAT, relabel=StubClassifier())
    with pytest.raises(SynthError, match="--no-relabel"):
        synthesize(tmp_path / "c", TeacherSettings(), SynthOptions(relabel=False), seeds=SEEDS_LABELS,
                   relabel=StubClassifier())
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_document_questions_keep_their_chunk_and_drop_ungrounded_answers(good: str, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    s = synthesize(out, TeacherSettings(base_url=good), SynthOptions(chunk_words=40, overlap_words=10),
                   documents=DOCS)
    rows = _rows(out)
    assert s["source"]["documents"] == ["kayaks.pdf", "refunds.md", "shipping.txt", "warranty.html"]
    # every reply carries one made-up pair ("Marco Polo founded it..."): dropped each time
    assert s["dropped"]["ungrounded"] == s["source"]["asked"] and rows and s["check"]["ok"]
    assert "Venice" not in (out / OUTPUT).read_text()
    chunks = {r["tunelab_synth"]["chunk"] for r in rows}
    assert {c.split("#")[0] for c in chunks} == set(s["source"]["documents"])
    assert any("35 euros per day" in r["messages"][-1]["content"] for r in rows)  # from the PDF
    # curation ran on the new rows: the e-mail address in refunds.md is redacted
    assert "care@lumen.example" not in (out / OUTPUT).read_text()


def test_a_garbage_teacher_leaves_no_output_that_looks_complete(good: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    synthesize(out, TeacherSettings(base_url=good), SynthOptions(n=3), seeds=SEEDS_CHAT)
    assert (out / OUTPUT).exists() and (out / MANIFEST).exists()
    # other requests (seed 1): the cache, keyed by model and request, not by address, has no reply for them
    with fake_teacher("garbage") as url, pytest.raises(SynthError) as exc:
        synthesize(out, TeacherSettings(base_url=url), SynthOptions(n=3, seed=1), seeds=SEEDS_CHAT)
    msg = str(exc.value)
    assert "gave no usable rows: 3 requests, 3 answered (0 from the cache); 0 parsed" in msg
    assert "3 dropped as unparsable (e.g. 'Lorem ipsum" in msg
    assert not (out / OUTPUT).exists() and not (out / MANIFEST).exists()
    assert not [p for p in out.iterdir() if p.name != CACHE_FILE]


def test_the_output_directory_must_be_ours(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match=r"holds other files \(notes.txt\)"):
        synthesize(tmp_path, TeacherSettings(), SynthOptions(), seeds=SEEDS_CHAT)
    with pytest.raises(SynthError, match="one of the two"):
        synthesize(tmp_path / "x", TeacherSettings(), SynthOptions())
