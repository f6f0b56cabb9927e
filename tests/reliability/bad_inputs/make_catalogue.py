"""Writes the bad-input fixtures and catalogue.yaml (run from the repository root; output committed)."""
import copy
import json
from pathlib import Path

import yaml

D = Path("tests/reliability/bad_inputs")
base = yaml.safe_load(open("examples/restaurant8k-minilm.yaml"))
base["model"] = "minilm-l6"  # the form before the model block: the catalogue keeps checking it is still read
base["data"] = {"format": "restaurant8k", "train": "good/train.json", "holdout": "good/holdout.json", "max_seq_length": 32}
base["storage"] = {"root": "state"}
base["tracking"] = {"mode": "none"}
good = D / "good"; good.mkdir(parents=True, exist_ok=True)
recs = json.load(open("examples/data/restaurant8k-small/train.json"))
(good / "train.json").write_text(json.dumps(recs[:20], indent=1))
(good / "holdout.json").write_text(json.dumps(recs[20:26], indent=1))
(good / "train.csv").write_text("text,category\nwhere is my card,card_arrival\nhow do I top up,top_up\n")
(good / "holdout.csv").write_text("text,category\ncard not here yet,card_arrival\n")
(good / "train.jsonl").write_text('{"instruction": "say hi", "response": "hi"}\n')
(good / "holdout.jsonl").write_text('{"instruction": "say bye", "response": "bye"}\n')
(good / "train-fields.jsonl").write_text('{"text": "table for 4 at 7pm", "fields": {"people": "4", "time": "7pm"}}\n')
(good / "holdout-fields.jsonl").write_text('{"text": "for 2 at noon", "fields": {"people": "2", "time": "noon"}}\n')
class _D: pass
DELETE = _D()
catalogue = []
FIXED = {"batch_size": 8, "num_epochs": 2, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
         "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
LR_ONLY = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
def spec(fixture, field, fragment, why, **edits):
    raw = copy.deepcopy(base)
    for dotted, value in edits.items():
        node, *path = raw, *dotted.split("__")
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if value is DELETE: node.pop(path[-1], None)
        else: node[path[-1]] = value
    (D / f"{fixture}.yaml").write_text(f"# {why}\n" + yaml.safe_dump(raw, sort_keys=False))
    catalogue.append({"file": f"{fixture}.yaml", "field": field, "message": fragment, "why": why})
def raw_file(name, content, fragment, why, binary=False):
    p = D / name
    (p.write_bytes if binary else p.write_text)(content)
    catalogue.append({"file": name, "field": "", "message": fragment, "why": why})
def data(name, content, fmt, role, fragment, why, binary=False):
    p = D / "data" / name; p.parent.mkdir(exist_ok=True)
    (p.write_bytes if binary else p.write_text)(content)
    other = {"restaurant8k": "good/{}.json", "csv": "good/{}.csv", "jsonl": "good/{}.jsonl",
             "extraction": "good/{}-fields.jsonl"}[fmt]
    edits = {"data__format": fmt, f"data__{role}": f"data/{name}"}
    for r in ("train", "holdout"):
        if r != role: edits[f"data__{r}"] = other.format(r)
    if fmt == "csv":
        edits.update(task="sequence_classification", objective={"metric": "accuracy"})
    if fmt == "jsonl":
        edits.update(task="causal_lm_sft", model="smollm2-135m", objective={"metric": "eval_loss"})
    spec(f"data-{Path(name).stem}-{fmt}", f"data.{role}", fragment, why, **edits)

spec("trials-wrong-type", "budget.trials", "valid integer", "a count given as a word", budget__trials="eight")
spec("trials-zero", "budget.trials", "greater than or equal to 1", "a sweep with no trials", budget__trials=0)
spec("concurrency-zero", "budget.max_concurrent", "greater than or equal to 1", "no trial could ever run", budget__max_concurrent=0)
spec("time-budget-negative", "budget.time_budget_s", "greater than 0", "a negative time budget", budget__time_budget_s=-5)
spec("batch-size-zero", "fixed.batch_size", "greater than or equal to 1", "batch size 0", search_space=LR_ONLY, fixed={**FIXED, "batch_size": 0})
spec("warmup-ratio-out-of-range", "fixed.warmup_ratio", "less than 1", "a warmup longer than training", search_space=LR_ONLY, fixed={**FIXED, "warmup_ratio": 1.5})
spec("scheduler-type-not-known", "fixed.lr_scheduler_type", "linear", "an LR schedule transformers does not have", search_space=LR_ONLY, fixed={**FIXED, "lr_scheduler_type": "sawtooth"})
spec("inverted-bounds", "search_space.params.learning_rate", "must be below high", "low above high",
     search_space={"params": {"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}})
spec("log-scale-from-zero", "search_space.params.weight_decay", "low > 0", "log scale needs a positive low",
     search_space={"params": {"weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}})
spec("empty-choices", "search_space.params.batch_size.choices", "at least 1", "a categorical with nothing to choose",
     search_space={"params": {"batch_size": {"type": "categorical", "choices": []}}})
spec("unknown-param-type", "search_space.params.learning_rate", "type", "a distribution sweeper does not know",
     search_space={"params": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
spec("unknown-search-space", "search_space", "unknown search space", "a misspelt space name", search_space="lora-defualt")
spec("unknown-scheduler", "scheduler.type", "'asha' or 'none'", "a scheduler sweeper does not offer", scheduler__type="pbt")
spec("reduction-factor-one", "scheduler.reduction_factor", "greater than 1", "ASHA would never stop anything", scheduler__reduction_factor=1)
spec("evals-per-epoch-zero", "scheduler.evals_per_epoch", "greater than or equal to 1", "no evaluation rounds", scheduler__evals_per_epoch=0)
spec("patience-zero", "early_stopping.patience", "greater than or equal to 1", "patience of zero rounds", early_stopping__patience=0)
spec("missing-train-file", "data.train", "file not found", "a data path that does not exist", data__train="nowhere/train.json")
spec("unknown-data-format", "data.format", "restaurant8k", "a format with no reader", data__format="parquet")
spec("seq-length-tiny", "data.max_seq_length", "greater than or equal to 8", "sequences too short to hold anything", data__max_seq_length=2)
spec("model-not-a-model", "model", "neither a named model", "a folder with no config.json", model="good")
spec("unknown-task", "task", "token_tagging", "a task with no trainer", task="regression")
spec("bad-name", "name", "pattern", "a name with spaces and capitals", name="My Sweep")
spec("unknown-top-key", "learning_rate", "unknown key", "a hyperparameter at the top level", learning_rate=0.01)
spec("unknown-nested-key", "data.holdout_path", "unknown key", "a misspelt data key", data__holdout_path="x.json")
spec("metric-not-reported", "objective.metric", "not reported by task", "an objective the task never reports", objective={"metric": "accuracy"})
spec("bad-direction", "objective.direction", "minimize", "a direction that is not one", objective={"metric": "f1_micro", "direction": "up"})
spec("negative-gpus", "resources.gpus", "greater than or equal to 0", "negative GPUs per trial", resources__gpus=-1)
spec("bad-tracking-mode", "tracking.mode", "offline", "a tracking mode W&B does not have", tracking__mode="cloud")
spec("searched-and-fixed", "fixed.lora_r", "both searched and fixed", "a parameter given twice", fixed={"lora_r": 8})
spec("unknown-hyperparameter", "fixed.momentum", "unknown hyperparameter", "a knob the trainers do not have", fixed={"momentum": 0.9})
spec("untuned-defaults", "fixed.batch_size", "neither searched nor fixed", "a space that leaves knobs at library defaults", search_space=LR_ONLY)
spec("missing-budget", "budget", "required", "no budget at all", budget=DELETE)
spec("seed-negative", "seed", "greater than or equal to 0", "a negative seed", seed=-1)
raw_file("not-a-mapping.yaml", "- name: a\n- name: b\n", "mapping", "a YAML list instead of settings")
raw_file("broken-yaml.yaml", "name: x\nbudget: {trials: 4\n", "not valid YAML at line", "unclosed braces")
raw_file("not-utf8.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8", "a Latin-1 spec file", binary=True)
raw_file("empty.yaml", "", "mapping", "an empty spec file")
data("empty.json", "", "restaurant8k", "train", "the file is empty", "an empty training file")
data("not-utf8.json", '[{"userInput": {"text": "caf\xe9"}}]'.encode("latin-1"), "restaurant8k", "train", "not UTF-8", "a Latin-1 data file", binary=True)
data("not-json.json", '[{"userInput": ', "restaurant8k", "holdout", "not valid JSON", "a truncated JSON file")
data("not-a-list.json", '{"userInput": {"text": "hi"}}', "restaurant8k", "train", "JSON list", "one record instead of a list")
data("missing-keys.json", json.dumps([{"labels": []}]), "restaurant8k", "train", "userInput.text is missing", "JSON records without their text")
data("span-type.json", json.dumps([{"userInput": {"text": "for 4 people"}, "labels": [{"slot": "people", "valueSpan": {"startIndex": "4", "endIndex": 5}}]}]), "restaurant8k", "train", "integer valueSpan", "span indices given as strings")
data("span-outside.json", json.dumps([{"userInput": {"text": "for 4"}, "labels": [{"slot": "people", "valueSpan": {"startIndex": 4, "endIndex": 40}}]}]), "restaurant8k", "holdout", "outside the text", "a span past the end of the text")
data("huge-line.json", json.dumps([{"userInput": {"text": "a" * 200_000}}]), "restaurant8k", "train", "limit 100,000", "one row of 200,000 characters")
data("no-label-column.csv", "text,intent\nhello,greet\n", "csv", "train", "'label' (or 'category') column", "a CSV without a label column")
data("empty-label.csv", "text,category\nhello,\n", "csv", "holdout", "empty text or label", "a CSV row with no label")
data("empty.csv", "", "csv", "train", "the file is empty", "an empty CSV file")
data("bad-line.jsonl", '{"instruction": "a", "response": "b"}\n{not json\n', "jsonl", "train", "line 2: not valid JSON", "a broken JSONL line")
data("missing-response.jsonl", '{"instruction": "a"}\n', "jsonl", "holdout", "'response'", "a JSONL row without its response")
data("label-wrong-type.jsonl", '{"instruction": "a", "response": 42}\n', "jsonl", "train", "string fields", "a response that is a number")
# Hostile and malformed input (issue 16): YAML that expands or recurses, ranges a trial refuses, rows that crashed.
def spec_text(**edits):
    raw = copy.deepcopy(base)
    raw.update(edits)
    return yaml.safe_dump(raw, sort_keys=False)
levels = ["&l0 [" + ", ".join(["lol"] * 10) + "]"] + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
raw_file("yaml-alias-bomb.yaml", spec_text() + f"fixed:\n  warmup_ratio: [{', '.join(levels)}]\n", "anchors and aliases",
         "nested aliases that expand ten-fold per level (10^6 items from 0.5 KB)")
raw_file("yaml-deep-nesting.yaml", "[" * 30000, "nested more than 32 levels", "30,000 nested lists (a RecursionError)")
raw_file("yaml-duplicate-key.yaml", spec_text() + "budget: {trials: 100}\n", "duplicate key 'budget'",
         "a key given twice (the last one silently won)")
def space(**params):
    """An inline space with these parameters searched; every other hyperparameter fixed."""
    return dict(search_space={"params": {"learning_rate": LR_ONLY["params"]["learning_rate"], **params}},
                fixed={k: v for k, v in FIXED.items() if k not in params})
spec("search-lr-negative", "search_space.params.learning_rate.low", "greater than 0", "a learning rate range below zero",
     **space(learning_rate={"type": "float", "low": -0.1, "high": 0.1}))
spec("search-lora-r-zero", "search_space.params.lora_r.low", "greater than or equal to 1", "a LoRA rank of 0..0",
     **space(lora_r={"type": "int", "low": 0, "high": 0}))
spec("search-otherwise-out-of-range", "search_space.params.warmup_ratio.otherwise", "less than 1",
     "a conditional warmup whose otherwise value is 5.0",
     **space(lr_scheduler_type={"type": "categorical", "choices": ["linear", "constant"]},
             warmup_ratio={"type": "float", "low": 0.0, "high": 0.1, "when": {"lr_scheduler_type": ["linear"]}, "otherwise": 5.0}))
spec("search-choice-wrong-type", "search_space.params.num_epochs.choices.1", "valid integer", "epoch choices [1, 'two']",
     **space(num_epochs={"type": "categorical", "choices": [1, "two"]}))
spec("search-float-for-int", "search_space.params.lora_r.type", "whole numbers", "a float range for an integer rank",
     **space(lora_r={"type": "float", "low": 4, "high": 32}))
spec("data-directory", "data.train", "file is a directory", "a folder given as the training file", data__train="good")
data("labels-not-a-list.json", json.dumps([{"userInput": {"text": "for 4"}, "labels": 5}]), "restaurant8k", "train",
     "record 0: labels must be a list", "labels given as a number (a TypeError)")
data("span-null.json", json.dumps([{"userInput": {"text": "for 4"}, "labels": [{"slot": "people", "valueSpan": None}]}]),
     "restaurant8k", "holdout", "record 0: each label needs", "a null valueSpan (an AttributeError)")
data("deeply-nested.json", "[" * 5000 + "]" * 5000, "restaurant8k", "train", "nested too deeply", "5,000 nested lists (a RecursionError)")
data("deeply-nested.jsonl", '{"instruction": "a", "response": "b"}\n' + "[" * 5000 + "]" * 5000 + "\n", "jsonl", "train",
     "line 2: JSON nested too deeply", "a JSONL line of 5,000 nested lists (a RecursionError)")
data("huge-number.json", "[" + "1" * 5000 + "]", "restaurant8k", "train", "not usable JSON", "a 5,000-digit number (a ValueError)")
data("fields-not-an-object.jsonl", '{"text": "for 4", "fields": ["people"]}\n', "extraction", "train",
     'an object "fields"', "extraction fields given as a list of names")
data("field-name-with-space.jsonl", '{"text": "total 12", "fields": {"total amount": "12"}}\n', "extraction", "holdout",
     "cannot name a metric", "a field name that cannot become the metric f1_<field>")
spec("prompt-template-without-text", "data.prompt_template", "must contain {text}", "a prompt that never shows the text",
     task="causal_lm_sft", model="smollm2-135m", objective={"metric": "eval_loss"},
     data={"format": "extraction", "train": "good/train-fields.jsonl", "holdout": "good/holdout-fields.jsonl",
           "prompt_template": "Extract {fields} as JSON"})
spec("allow-pair-not-two-splits", "audit.allow.0", "two different splits", "an allowance for a pair of one split",
     audit={"allow": ["near-duplicate:train-train"]})
(D / "catalogue.yaml").write_text("# Malformed specs and data files: each must be refused before anything is written, with a\n"
                                  "# message that names the field (`field`, empty for a file that is not a spec at all).\n" +
                                  yaml.safe_dump(catalogue, sort_keys=False, width=200))
print(len(catalogue))
