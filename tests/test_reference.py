"""The reference cache: its key names exactly one set of weights, and a second run reuses it without a forward."""

from __future__ import annotations

import pytest
import torch

from pairforge.fingerprints import model_fingerprint
from pairforge.models import load_causal_lm
from pairforge.sequences.tokenize import tokenize_pairs
from pairforge.training.reference import reference_logps

pytestmark = pytest.mark.slow


def test_the_key_is_the_same_for_the_same_weights_and_differs_for_one_changed_value(tiny_model_dir, tmp_path):
    model, _ = load_causal_lm(str(tiny_model_dir))
    again, _ = load_causal_lm(str(tiny_model_dir))
    assert model_fingerprint(model) == model_fingerprint(again)
    with torch.no_grad():  # one value of one tensor, the smallest step bf16 can take away from it
        weight = again.model.layers[1].mlp.down_proj.weight
        weight[7, 3] = torch.nextafter(weight[7, 3], torch.tensor(1.0))
    assert model_fingerprint(model) != model_fingerprint(again)
    again.save_pretrained(str(tmp_path / "changed"))
    load_causal_lm(str(tiny_model_dir))[1].save_pretrained(str(tmp_path / "changed"))
    reloaded, _ = load_causal_lm(str(tmp_path / "changed"))
    assert model_fingerprint(reloaded) == model_fingerprint(again)
    assert model_fingerprint(load_causal_lm(str(tiny_model_dir), "bfloat16")[0]) != model_fingerprint(model)


def test_two_swapped_values_change_the_key(tiny_model_dir):
    """A plain sum of the bits would not see a permutation; the position-weighted one must."""
    model, _ = load_causal_lm(str(tiny_model_dir))
    before = model_fingerprint(model)
    with torch.no_grad():
        weight = model.model.layers[0].self_attn.q_proj.weight
        weight[[0, 1]] = weight[[1, 0]].clone()
    assert model_fingerprint(model) != before


def test_a_cached_reference_is_read_back_without_running_the_model(tiny_model_dir, tmp_path):
    import polars as pl

    from conftest import preference_rows

    model, tokenizer = load_causal_lm(str(tiny_model_dir))
    pairs, _ = tokenize_pairs(pl.DataFrame(preference_rows(6)), tokenizer, max_length=64, max_prompt_length=None,
                              too_long="truncate", target_column=None, source="pairs", prompt_format="text")
    cache = tmp_path / f"{model_fingerprint(model)}.parquet"
    first = reference_logps(model, pairs, tokenizer.pad_token_id, cache)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    assert reference_logps(model, pairs, tokenizer.pad_token_id, cache) == first
    assert calls == [] and len(pl.read_parquet(cache)) == 6
    assert all(c < 0 and r < 0 for c, r in first.values())


def real_length_pairs(path, n: int = 8) -> None:
    """Quickstart prompts with their reference answers (chosen) against another prompt's answer (rejected), of
    clearly different lengths: batches of 2 have widths and row counts that a length-sorted pass never forms."""
    import json
    import random

    import polars as pl

    from conftest import REPO

    rows = sorted(json.loads((REPO / "data" / "quickstart" / "reference.json").read_text()),
                  key=lambda r: len(r["output"]))
    picks = rows[:: len(rows) // n][:n]
    random.Random(0).shuffle(picks)
    pairs = [{"prompt": [{"role": "user", "content": r["instruction"]}],
              "chosen": [{"role": "assistant", "content": r["output"]}],
              "rejected": [{"role": "assistant", "content": picks[i - 1]["output"]}],
              "pair_type": "easy" if i % 2 else "hard", "level": i} for i, r in enumerate(picks)]
    pl.DataFrame(pairs).write_parquet(path)


@pytest.mark.parametrize("order", ["length-grouped", "curriculum"])
def test_bf16_step_one_is_exactly_ln2_on_real_length_pairs_and_after_a_resume(tmp_path, pairforge_cache, order):
    """The README's claim on real data: SmolLM2 in bf16 with the default precomputed reference starts at loss
    ln 2 with rewards 0 (bf16 numbers depend on the batch's shape, so the reference is computed in the training
    forwards' shapes), in a curriculum's order too; a run resumed from a mid-run checkpoint with an empty
    reference cache continues the uninterrupted run's losses exactly."""
    import json
    import math
    import shutil

    from conftest import rewind
    from pairforge.train_config import CurriculumConfig, TrainConfig
    from pairforge.training.trainer import train

    real_length_pairs(tmp_path / "pairs.parquet")
    curriculum = CurriculumConfig(difficulty="column:level", schedule="sorted") if order == "curriculum" else None
    cfg = TrainConfig(model="embedded", pairs=tmp_path / "pairs.parquet", out=tmp_path / "run", dtype="bfloat16",
                      batch_size=2, max_steps=2, save_steps=1, keep_checkpoints=3, lr=1e-5, curriculum=curriculum)
    first = train(cfg, progress=False).metrics[0]
    assert first["step"] == 1 and first["train/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["train/rewards/chosen"] == 0.0 and first["train/rewards/rejected"] == 0.0
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rewind(tmp_path / "run", 1)
    shutil.rmtree(pairforge_cache / "reference")
    train(cfg, progress=False)
    resumed = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["train/loss"] for line in resumed] == [json.loads(line)["train/loss"] for line in logged]
