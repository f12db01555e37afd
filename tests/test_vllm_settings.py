"""vLLM's engine settings (`vllm:` on a source and on `eval`): what reaches vllm.LLM, what is refused, and our side
of the engine's request path.

The real engine needs a GPU (tests/test_cli_options.py runs it where vllm is installed). Here a minimal stand-in
`vllm` package, written into tmp_path and put on sys.path for one test only, records what pairforge calls and answers
deterministically: it checks only our side of the call (engine keywords, chunked commits in order, per-request
seeds, chat vs completions, log-probs, token counts), never vLLM itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from test_generate import prompts, run_cli, write_recipe

from conftest import one_line_error
from pairforge.config import EvalConfig, SourceConfig
from pairforge.errors import InputError
from pairforge.recipe import load_recipe
from pairforge.recipe_docs import EXAMPLES
from pairforge.requests.backends.base import Request, check_source
from pairforge.requests.backends.vllm_engine import engine_args
from pairforge.requests.engine import make_backend, request_seed

STAND_IN = '''
"""A stand-in for vllm's offline API (LLM, SamplingParams, RequestOutput): the real engine needs a GPU."""
from types import SimpleNamespace

calls = []  # ("LLM", keywords), ("chat" | "generate", first prompt, how many), ("done", key) from the test


class SamplingParams:
    def __init__(self, **keywords):
        self.keywords = keywords


class LLM:
    def __init__(self, **keywords):
        calls.append(("LLM", keywords))

    def chat(self, conversations, params, use_tqdm=True):
        calls.append(("chat", conversations[0][-1]["content"], len(conversations)))
        return [_output(c[-1]["content"], p.keywords) for c, p in zip(conversations, params)]

    def generate(self, prompts, params, use_tqdm=True):
        calls.append(("generate", prompts[0], len(prompts)))
        return [_output(t, p.keywords) for t, p in zip(prompts, params)]


def _output(prompt, sampling):
    words = f"{prompt} / seed {sampling['seed']}".split()[:sampling["max_tokens"]]
    first = {7: SimpleNamespace(decoded_token="A", logprob=-0.25), 9: SimpleNamespace(decoded_token="B", logprob=-1.5)}
    answer = SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))),
                             logprobs=[first] if sampling["logprobs"] else None,
                             finish_reason="length" if len(words) == sampling["max_tokens"] else "stop")
    return SimpleNamespace(prompt_token_ids=list(range(len(prompt.split()))), outputs=[answer])
'''


@pytest.fixture
def stand_in_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in importable as `vllm` for this test only."""
    (tmp_path / "stand-in" / "vllm").mkdir(parents=True)
    (tmp_path / "stand-in" / "vllm" / "__init__.py").write_text(STAND_IN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "stand-in"))
    import vllm

    yield vllm
    sys.modules.pop("vllm", None)


def vllm_source(**settings: Any) -> SourceConfig:
    return SourceConfig(name="big", backend="vllm", model="org/model", dtype="bfloat16", seed=3, **settings)


def test_engine_keywords_are_the_source_then_the_settings_that_are_set() -> None:
    assert engine_args(vllm_source()) == {"model": "org/model", "dtype": "bfloat16", "seed": 3}  # vLLM's defaults
    passed = {"enforce_eager": True, "quantization": "awq"}
    cfg = vllm_source(vllm={"tensor_parallel_size": 4, "gpu_memory_utilization": 0.85, "max_model_len": 4096,
                            "enable_prefix_caching": False, "engine_args": passed})
    assert engine_args(cfg) == {"model": "org/model", "dtype": "bfloat16", "seed": 3, "tensor_parallel_size": 4,
                                "gpu_memory_utilization": 0.85, "max_model_len": 4096, "enable_prefix_caching": False,
                                "enforce_eager": True, "quantization": "awq"}


def test_engine_settings_do_not_change_the_cache_key() -> None:
    """Another GPU count or memory share answers the same model and sampling: the stored answers still count."""
    assert vllm_source(vllm={"tensor_parallel_size": 8, "max_model_len": 2048}).cache_settings() == \
        vllm_source().cache_settings()


@pytest.mark.parametrize("passed", [{"revision": "v2"}, {"tokenizer": "org/other-tokenizer"}, {"quantization": "fp8"},
                                    {"hf_overrides": {"rope_scaling": {"type": "linear", "factor": 2.0}}}])
def test_engine_args_that_change_the_answers_change_the_cache_key(passed: dict[str, Any]) -> None:
    """Other weights (a revision, on-the-fly fp8), another tokenizer or other model settings answer differently:
    the answers of the model as it was must not be served from the cache for them."""
    assert vllm_source(vllm={"engine_args": passed}).cache_settings() != vllm_source().cache_settings()


@pytest.mark.parametrize(("settings", "expected"), [
    ({"tensor_parallel_size": 0}, "sources.0.vllm.tensor_parallel_size': Input should be greater than or equal to 1"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization': Input should be less than or equal to 1"),
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization': Input should be greater than 0"),
    ({"max_model_len": 0}, "max_model_len': Input should be greater than or equal to 1"),
    ({"engine_args": {"tensor_parallel_size": 2}},
     "engine_args key 'tensor_parallel_size' repeats the setting vllm.tensor_parallel_size: set it there"),
    ({"engine_args": {"seed": 1}}, "engine_args key 'seed' is the source's own `seed`: set it on the source"),
    ({"tp": 2}, "sources.0.vllm.tp': unknown key"),
])
def test_bad_engine_settings_are_one_line(tmp_path: Path, settings: dict[str, Any], expected: str) -> None:
    recipe = write_recipe(tmp_path, prompts(1), [{"name": "big", "backend": "vllm", "model": "org/m",
                                                  "vllm": settings}])
    with pytest.raises(InputError, match=expected.split(": ", 1)[1].replace("(", r"\(")):
        load_recipe(recipe)
    if "tensor_parallel_size" in str(settings):  # the command says the same in one line, exit 2
        one_line_error(run_cli("generate", str(recipe), "--out", str(tmp_path / "out")), expected)


def test_the_engine_section_is_only_for_backend_vllm(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, prompts(1), [{"name": "api", "backend": "openai", "model": "m",
                                                  "vllm": {"max_model_len": 4096}}])
    one_line_error(run_cli("generate", str(recipe), "--out", str(tmp_path / "out")),
                   "the `vllm` section sets vLLM's engine: only for backend vllm, not openai")
    with pytest.raises(InputError, match="only for backend vllm, not transformers"):
        load_recipe(write_recipe(tmp_path, prompts(1), [{"name": "a"}], eval={"vllm": {"max_model_len": 512}}))
    result = run_cli("run", str(write_recipe(tmp_path, prompts(1), [{"name": "a"}],
                                             eval={"backend": "vllm", "vllm": {"tensor_parallel_size": 0}})),
                     "--dry-run")
    one_line_error(result, "eval.vllm.tensor_parallel_size", "greater than or equal to 1")


def test_the_docs_recipe_snippets_are_valid() -> None:
    sources = yaml.safe_load(EXAMPLES["generate"][1])["sources"]
    assert [SourceConfig.model_validate(s).backend for s in sources] == ["openai", "vllm"]
    assert EvalConfig.model_validate(yaml.safe_load(EXAMPLES["eval"][1])["eval"]).vllm.tensor_parallel_size == 2


def test_a_vllm_option_that_is_no_mapping_is_one_line() -> None:
    from pairforge.options import parse_engine

    with pytest.raises(InputError, match="expected a YAML mapping") as caught:
        parse_engine("tensor_parallel_size\n2")  # a shell's $'...' or a pasted block: the text has a line break
    assert "\n" not in str(caught.value), str(caught.value)


def test_eval_with_vllm_but_without_the_package_names_the_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here, so the message for a missing vllm cannot appear")
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps([{"instruction": "Name a fruit.", "output": "An apple.", "generator": "ref"}]))
    (tmp_path / "model").mkdir()
    result = run_cli("eval", "--models", f"m={tmp_path / 'model'}", "--reference", str(reference), "--backend", "vllm",
                     "--vllm", "{tensor_parallel_size: 2}", "--out", str(tmp_path / "eval"))
    one_line_error(result, "backend vllm needs the vllm package: pip install 'pairforge[vllm]'")
    one_line_error(run_cli("eval", "--models", f"m={tmp_path / 'model'}", "--reference", str(reference), "--vllm",
                           "{gpu_memory_utilization: 2}"), "--vllm", "gpu_memory_utilization")


class Recorder:
    """A reporter writing each outcome into the stand-in's call log, so commits interleave with engine calls."""

    def __init__(self, calls: list[Any]) -> None:
        self.calls, self.done = calls, {}

    def completed(self, request: Request, completion: Any) -> None:
        self.calls.append(("done", request.key))
        self.done[request.key] = completion

    def failed(self, request: Request, reason: str) -> None:
        raise AssertionError(reason)

    def retried(self, request: Request, reason: str) -> None:
        raise AssertionError(reason)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_engine_request_path(stand_in_vllm: ModuleType, endpoint: str) -> None:
    cfg = vllm_source(endpoint=endpoint, max_new_tokens=5, vllm={"tensor_parallel_size": 2})
    check_source(cfg)  # the package is found: no install hint
    keys = [f"gen:big:p{i}:0:x" for i in range(600)]
    requests = [Request(key, [{"role": "user", "content": f"Prompt {i}"}], request_seed(cfg.seed, key),
                        top_logprobs=2 if i == 1 else 0) for i, key in enumerate(keys)]
    report = Recorder(stand_in_vllm.calls)
    make_backend(cfg).run(requests, report)
    calls = stand_in_vllm.calls
    assert calls[0] == ("LLM", engine_args(cfg))
    # two chunks of at most 512, each committed, in request order, before the next is asked
    asked = "chat" if endpoint == "chat" else "generate"
    assert calls[1] == (asked, "Prompt 0", 512) and calls[514] == (asked, "Prompt 512", 88)
    assert [c[1] for c in calls if c[0] == "done"] == keys and calls[2:514] == [("done", k) for k in keys[:512]]
    first, second = report.done[keys[0]], report.done[keys[1]]
    assert first.text == f"Prompt 0 / seed {requests[0].seed}"  # each request's own seed
    assert (first.tokens, first.finish_reason, first.first_token_logprobs) == (5, "length", {})
    assert second.first_token_logprobs == {"A": -0.25, "B": -1.5}


def test_eval_answers_through_the_engine_with_its_section(stand_in_vllm: ModuleType, tmp_path: Path) -> None:
    """`eval` with backend vllm: the models answer through the engine with the eval section's settings, and the
    leaderboard records the backend."""
    import pairforge as pf

    reference = [{"instruction": f"Name fruit {i}.", "output": "An apple.", "generator": "ref"} for i in range(3)]
    (tmp_path / "model").mkdir()
    board = pf.evaluate(reference=reference, models={"m": str(tmp_path / "model")}, out=tmp_path / "eval",
                        backend="vllm", vllm={"gpu_memory_utilization": 0.5}, max_new_tokens=3, progress=False)
    assert stand_in_vllm.calls[0] == ("LLM", {"model": str(tmp_path / "model"), "dtype": board.config["settings"]
                                              ["dtype"], "seed": 0, "gpu_memory_utilization": 0.5})
    answers = json.loads((tmp_path / "eval" / "m.model_outputs.json").read_text())
    assert [a["output"] for a in answers] == [f"Name fruit {i}." for i in range(3)]  # echoed, cut at 3 tokens
    assert (board.config["settings"]["backend"], board.config["settings"]["vllm"]["gpu_memory_utilization"]) == \
        ("vllm", 0.5)


def test_vllm_refuses_a_lora_adapter_in_one_line(tmp_path: Path) -> None:
    """A LoRA run saved as an adapter (the default) is no model vLLM loads: one line saying how to save it."""
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="is a LoRA adapter, which vLLM does not load as a model: train with "
                                         "lora.merge: true"):
        check_source(vllm_source().model_copy(update={"model": str(tmp_path / "run" / "model")}))


def test_rates_and_engine_settings_leave_finished_stages_finished(tmp_path: Path) -> None:
    """Like the cache key, the stages' fingerprints leave out how fast and on what a model answers (a judge's rpm,
    eval's engine settings), so setting them on a finished run redoes nothing; eval's backend itself counts."""
    from pairforge.config import JudgeConfig
    from pairforge.pipeline import plan

    quickstart = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    llm = SourceConfig(name="judge", backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    recipe = quickstart.model_copy(update={"judge": JudgeConfig(kind="llm-pairwise", llm=llm)})

    def fingerprints(judge_llm: dict[str, Any], eval_section: dict[str, Any]) -> dict[str, str]:
        changed = recipe.model_copy(update={"judge": JudgeConfig(kind="llm-pairwise", llm={**llm.model_dump(),
                                                                                          **judge_llm}),
                                            "eval": EvalConfig.model_validate({**quickstart.eval.model_dump(),
                                                                               **eval_section})})
        return {s.name: s.fingerprint() for s in plan(changed, tmp_path / "run").stages}

    assert fingerprints({"rpm": 60, "tpm": 10**5}, {}) == fingerprints({}, {})
    on_vllm = fingerprints({}, {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}})
    assert on_vllm == fingerprints({}, {"backend": "vllm", "vllm": {"tensor_parallel_size": 8}})
    assert on_vllm["eval"] != fingerprints({}, {})["eval"]


def test_eval_help_names_the_vllm_extra_to_install() -> None:
    """The help's square brackets are the extra's name, not markup: 'pip install pairforge' installs no vllm."""
    result = subprocess.run([sys.executable, "-m", "pairforge", "eval", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "400"}, timeout=120)
    assert "pip install 'pairforge[vllm]'" in result.stdout, result.stdout
