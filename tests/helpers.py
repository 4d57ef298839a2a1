"""Plain helpers the tests share (tokenizer, corpus, stage 1), imported as `from helpers import ...`.

They live here, not in conftest.py: tests/ and tests/web/ each have a conftest.py, and in one pytest
session the module named `conftest` is whichever was collected last, so `from conftest import ...`
inside a test can find the web one. conftest.py builds its fixtures from these.
"""
from __future__ import annotations

WORDS = (
    "a an the is are of in at to and with there image picture describe detail what colour shape "
    "red green blue yellow purple orange white circle square triangle cross diamond star small large "
    "top bottom left right center one two three four yes no answer question using single word phrase "
    "option letter from given choices directly how many objects background noisy thin marks"
)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
          "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
          "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(chatml: bool = False):
    """A word-level tokenizer with the vicuna chat template, or a Qwen-like ChatML one."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from victor.data.templates import TEMPLATE_TEXT, VICUNA_CHAT_TEMPLATE

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    words = {"system", "user", "assistant"}
    for w in (WORDS + " " + TEMPLATE_TEXT + " a b c d 0 1 2 3 4 5 6 7 8 9 ? . , ( )").lower().split():
        words.update(t for t, _ in pre.pre_tokenize_str(w))
    vocab = {t: i for i, t in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=specials[4:])
    fast.chat_template = CHATML if chatml else VICUNA_CHAT_TEMPLATE
    return fast


COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}


def corpus_dir(corpus, root, **files):
    """`root` with the shared corpus's images and the data files a test names them by (symlinks)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").symlink_to(corpus / "img", target_is_directory=True)
    for name, source in files.items():
        (root / name.replace("_", ".")).symlink_to(corpus / source)
    return root


def train_stage1(backbones, data, image_root, out, steps=2, batch=8):
    """A tiny stage 1 (projector alignment) on `data`: the starting point of the stage-1.5/2 tests."""
    from victor.train.run import train_from_recipe

    vision, llm = backbones
    return train_from_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm, "--data_path", str(data),
                                    "--image_root", str(image_root), "--output_dir", str(out), "--max_steps",
                                    str(steps), "--per_device_train_batch_size", str(batch), "--report_to", "none",
                                    "--save_strategy", "no", "--use_cpu", "True"])
