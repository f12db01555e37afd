"""Our losses and gradients equal TRL's DPOTrainer on the same batch (fp32), for every loss both have.

Policy and reference are two different tiny random Llamas, so the losses are not at their trivial
step-0 values; TRL's own data pipeline and `compute_loss` produce its side. Our side runs both batch
layouts (one row per answer, and one row per pair with the prompt pushed through once).
"""

from __future__ import annotations

import copy

import datasets
import polars as pl
import pytest
import torch

from conftest import preference_rows
from pairforge.sequences.logprobs import answer_logps, collate
from pairforge.sequences.tokenize import tokenize_pairs
from pairforge.training import losses as L

pytestmark = pytest.mark.slow


def tiny_llama(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(("trl_name", "ours", "smoothing"), [
    ("sigmoid", "dpo", 0.0), ("ipo", "ipo", 0.0), ("hinge", "hinge", 0.0), ("robust", "robust", 0.2),
    ("apo_zero", "apo_zero", 0.0), ("apo_down", "apo_down", 0.0),
])
@pytest.mark.parametrize("share_prompt", [False, True])
def test_loss_and_gradients_equal_trl(tmp_path, embedded_tokenizer, trl_name, ours, smoothing, share_prompt):
    from trl import DPOConfig, DPOTrainer

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in preference_rows(4)]
    policy, reference = tiny_llama(embedded_tokenizer, 1), tiny_llama(embedded_tokenizer, 2)
    args = DPOConfig(output_dir=str(tmp_path), loss_type=[trl_name], beta=0.1, label_smoothing=smoothing,
                     max_length=128, report_to=[], use_cpu=True, per_device_train_batch_size=4, bf16=False)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=embedded_tokenizer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()

    pairs, _ = tokenize_pairs(pl.DataFrame(rows), embedded_tokenizer, max_length=128)
    batch = collate(pairs, embedded_tokenizer.pad_token_id, with_targets=False, share_prompt=share_prompt)
    sums, counts = answer_logps(policy, batch)
    with torch.no_grad():
        ref_sums, _ = answer_logps(reference, batch)
    n = batch.pairs
    x = L.SequenceLogps(chosen=sums[:n], rejected=sums[n:], chosen_tokens=counts[:n], rejected_tokens=counts[n:],
                        ref_chosen=ref_sums[:n], ref_rejected=ref_sums[n:])
    our_loss = L.LOSSES[ours](x, L.LossSettings(beta=0.1, label_smoothing=smoothing)).mean()
    our_loss.backward()

    assert abs(our_loss.item() - trl_loss.item()) < 1e-5
    assert abs(our_loss.item() - 0.6931) > 1e-3 or ours != "dpo"  # policy != reference: not the trivial value
    for (name, mine), (_, theirs) in zip(policy.named_parameters(), trainer.model.named_parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)
