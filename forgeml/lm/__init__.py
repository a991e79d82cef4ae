"""Language models: a text corpus -> tokens -> GPT (or a pretrained causal LM) -> generation.

- corpus.py: sources, train/val split, the memory-mapped token cache, `TokenBlocks`
- tokenizer.py: `LMTokenizer` (char, byte-level BPE, pretrained tokenizer.json)
- train.py: `train_lm`, called by `forgeml.train` for configs with `data.corpus`
- save.py: the run directory of a language model
- model.py: `LanguageModel` (what `forgeml.load` gives for such a run): generate / stream
- cli.py: `forgeml generate RUN_DIR --prompt ...`
"""
