"""The model card of a multilabel run: label count, scalar table, per-label table."""

import torch

from forgeml.evaluation.metrics import MetricSet
from forgeml.evaluation.report import write_card


def multilabel_metrics() -> dict:
    # Label "rare" is never true: its AUCs are undefined and shown as "–".
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, -1.0, -3.0], [-2.0, 1.0, -3.0], [1.0, -1.0, 1.0], [-1, 2, -3]])
    metric_set = MetricSet("multilabel", ["news", "sport", "rare"])
    metric_set.update(logits, target)
    return metric_set.compute()


def test_card_has_per_label_table(tmp_path):
    test = multilabel_metrics()
    write_card(
        tmp_path,
        name="tagger",
        task="multilabel",
        config={"data": {"source": "tags.csv", "target": "tags"}, "model": {"name": "mlp"}},
        input_schema=[{"name": "text", "type": "text"}],
        output_schema={"name": "tags", "task": "multilabel", "classes": ["news", "sport", "rare"]},
        metrics={"train": {"loss": 0.3, **test}, "test": {"loss": 0.4, **test}},
        num_params=100,
        data_summary={"train": 4, "test": 4},
        stop_reason="max_epochs",
        precision="fp32",
        created_at="2025-01-02T03:04:05+00:00",
        versions={"forgeml": "0.1.0"},
    )
    card = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert "3 labels: `news`, `sport`, `rare`" in card
    for name in ("subset_accuracy", "hamming_loss", "f1_samples", "roc_auc_macro", "pr_auc_macro"):
        assert f"| {name} |" in card, name
    assert "per_label" not in card and "Per class" not in card
    assert "Per label (test split):" in card
    assert "| label | precision | recall | f1 | support | roc_auc | pr_auc |" in card
    assert "| news | 1.0000 | 1.0000 | 1.0000 | 2 | 1.0000 | 1.0000 |" in card
    assert "| rare | 0.0000 | 0.0000 | 0.0000 | 0 | – | – |" in card
