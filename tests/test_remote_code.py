"""victor_llava checkpoints load where victor cannot be imported (trust_remote_code), and nowhere silently wrong.

Checkpoints written by `build_model`'s model, by a stage-1 run (stock Trainer `_save`) and by a
stage-1.5 run (`VictorTrainer._save`) are loaded in a subprocess where `import victor` fails, with
the stock Auto classes, `pipeline`, and the loading and generate calls of lmms-eval's `huggingface`
model (all but its `audios=[]` processor argument, which LlavaProcessor rejects in transformers
5.16.1, 5.20.0 and 5.24.0); logits and greedy answers must equal those of victor's own class. The vLLM plugin is
checked without vLLM (it cannot be installed here).
"""
import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from victor.model.assemble import build_model, load_model
from victor.train.run import train_from_recipe

REPO = Path(__file__).resolve().parents[1]
CASES = [((250, 0, 0), "what colour is the circle ?"), ((0, 0, 250), "how many objects ?")]
NEW_TOKENS = 6
REMOTE_FILES = {"configuration_victor_llava.py", "modeling_victor_llava.py"}

# Runs in a fresh interpreter, cwd outside the repo, no PYTHONPATH: victor is blocked before anything
# else runs (the venv's editable install would otherwise find it), so only the checkpoint's files can help.
VICTOR_FREE = r'''
import sys
sys.modules["victor"] = None
import json
from pathlib import Path

try:
    import victor  # noqa: F401
    sys.exit("victor is importable")
except ImportError:
    pass
import torch
from PIL import Image
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                          AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, pipeline)

spec = json.loads(Path(sys.argv[1]).read_text())
out = {}


def user(prompt, image=None):
    item = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [{"role": "user", "content": [item, {"type": "text", "text": prompt}]}]


def refusal(load):
    try:
        load()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


for i, ck in enumerate(spec["checkpoints"]):
    config = AutoConfig.from_pretrained(ck, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(ck, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ck, trust_remote_code=True)
    features = torch.randn(3, 5, config.vision_config.hidden_size)
    norms = model.model.multi_modal_projector(features).norm(dim=-1)
    res = {"config": type(config).__module__, "model": type(model).__module__, "norms": norms.tolist(),
           "processor": type(processor).__name__, "greedy": [], "pipeline": [], "lmms_eval": []}
    logits = []
    for colour, prompt in spec["cases"]:
        image = Image.new("RGB", (32, 32), tuple(colour))
        text = processor.apply_chat_template(user(prompt), add_generation_prompt=True)
        inputs = processor(text=text, images=image, return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits)
            ids = model.generate(**inputs, max_new_tokens=spec["new_tokens"], do_sample=False)
        res["greedy"].append(processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    torch.save(logits, Path(spec["out"]) / f"logits{i}.pt")

    pipe = pipeline("image-text-to-text", model=ck, trust_remote_code=True)
    for colour, prompt in spec["cases"]:
        image = Image.new("RGB", (32, 32), tuple(colour))
        got = pipe(text=user(prompt, image), max_new_tokens=spec["new_tokens"], do_sample=False, return_full_text=False)
        res["pipeline"].append(got[0]["generated_text"].strip())

    # lmms-eval's `huggingface` model (lmms_eval/models/chat/huggingface.py, v0.7.2): how it picks and loads the
    # model class (its model_type test never matches, so AutoModel), in bfloat16, and how it calls generate
    assert config.model_type not in AutoModelForCausalLM._model_mapping.keys()
    assert config.model_type not in AutoModelForImageTextToText._model_mapping.keys()
    harness = AutoModel.from_pretrained(ck, trust_remote_code=True, torch_dtype="bfloat16", device_map="cpu").eval()
    tokenizer = AutoTokenizer.from_pretrained(ck, trust_remote_code=True)
    res["automodel"] = type(harness).__name__
    for colour, prompt in spec["cases"]:
        image = Image.new("RGB", (32, 32), tuple(colour))
        texts = [processor.apply_chat_template(user(prompt, image), tokenize=False, add_generation_prompt=True)]
        # lmms-eval also passes audios=[], which LlavaProcessor rejects (ValueError) in transformers 5.16 to 5.24
        inputs = processor(text=texts, images=[image], videos=[], padding=True, return_tensors="pt")
        ids = harness.generate(**inputs, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               do_sample=False, temperature=None, top_p=None, num_beams=1,
                               max_new_tokens=spec["new_tokens"], use_cache=True)
        res["lmms_eval"].append(processor.batch_decode(ids[:, inputs.input_ids.shape[1]:], skip_special_tokens=True,
                                                       clean_up_tokenization_spaces=False)[0])

    resaved = Path(spec["out"]) / f"resaved{i}"
    model.save_pretrained(resaved)
    res["resaved"] = sorted(p.name for p in resaved.iterdir())
    res["resaved_auto_map"] = json.loads((resaved / "config.json").read_text())["auto_map"]
    out[ck] = res

ck = spec["checkpoints"][0]
out["refusals"] = {
    "AutoConfig": refusal(lambda: AutoConfig.from_pretrained(ck)),
    "AutoModelForImageTextToText": refusal(lambda: AutoModelForImageTextToText.from_pretrained(ck)),
    "pipeline": refusal(lambda: pipeline("image-text-to-text", model=ck)),
    "LlavaForConditionalGeneration": refusal(lambda: LlavaForConditionalGeneration.from_pretrained(ck)),
}
# the processor is stock: it loads without the flag (the tokenizer's probe of config.json asks about remote
# code; stdin is empty, so it falls back to the plain config)
out["processor_without_flag"] = type(AutoProcessor.from_pretrained(ck)).__name__
out["victor_modules"] = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "victor" and v is not None)
(Path(spec["out"]) / "report.json").write_text(json.dumps(out))
'''


def run_victor_free(checkpoints, tmp_path):
    """Load `checkpoints` in a victor-free interpreter; returns its JSON report."""
    work = tmp_path / "victor_free"
    work.mkdir()
    (work / "spec.json").write_text(json.dumps({"checkpoints": [str(c) for c in checkpoints], "cases": CASES,
                                                "new_tokens": NEW_TOKENS, "out": str(work)}))
    (work / "check.py").write_text(VICTOR_FREE)
    env = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"),
           "HF_MODULES_CACHE": str(work / "modules"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(work / "check.py"), str(work / "spec.json")], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((work / "report.json").read_text())
    report["logits"] = [torch.load(work / f"logits{i}.pt") for i in range(len(checkpoints))]
    return report


def victor_reference(path, dtype=None):
    """Logits and greedy answers of victor's own class on CASES."""
    model, processor = load_model(str(path), dtype=dtype)
    model.eval()
    logits, answers = [], []
    for colour, prompt in CASES:
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": prompt}]}], add_generation_prompt=True)
        inputs = processor(text=text, images=Image.new("RGB", (32, 32), colour), return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.no_grad():
            logits.append(model(**inputs).logits)
            ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answers.append(processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return logits, answers


def carries_remote_code(path):
    config = json.loads((Path(path) / "config.json").read_text())
    return (REMOTE_FILES <= {p.name for p in Path(path).iterdir()} and config["model_type"] == "victor_llava"
            and set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"})


@pytest.fixture(scope="module")
def checkpoints(backbones, tmp_path_factory):
    """A normalised checkpoint from each writer: build_model's model, stage 1 (stock _save), stage 1.5."""
    root = tmp_path_factory.mktemp("remote")
    model, processor = build_model(*backbones, normalize_projector=True)
    built = root / "built"
    model.save_pretrained(built)
    processor.save_pretrained(built)

    (root / "img").mkdir()
    records = []
    for i, colour in enumerate([(230, 20, 20), (20, 20, 230)] * 4):
        Image.new("RGB", (32, 32), colour).save(root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image ."}, {"from": "gpt", "value": "a red image ."}]})
    (root / "d.json").write_text(json.dumps(records))
    small = ["--data_path", str(root / "d.json"), "--image_root", str(root / "img"), "--max_steps", "2",
             "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none",
             "--use_cpu", "True", "--dataloader_num_workers", "0", "--seed", "0"]
    vision, llm = backbones
    s1, s15 = root / "s1", root / "s15"
    train_from_recipe(None, ["--stage", "1", "--vision", vision, "--llm", llm, "--normalize_projector", "True",
                             "--output_dir", str(s1)] + small)
    train_from_recipe(None, ["--stage", "1.5", "--init_from", str(s1), "--pool_size", "16",
                             "--output_dir", str(s15)] + small)
    return built, s1, s15


def test_every_writer_ships_the_remote_code(checkpoints):
    for path in checkpoints:
        assert carries_remote_code(path), sorted(p.name for p in path.iterdir())
    for name in REMOTE_FILES:  # the shipped files need only torch and transformers
        tree = ast.parse((checkpoints[0] / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert {m.split(".")[0] for m in imported} <= {"torch", "transformers"}, imported


def test_stock_llava_checkpoint_carries_no_remote_code(tiny_llava, tmp_path):
    model, _ = tiny_llava
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.slow
def test_victor_free_interpreter_loads_the_same_model(checkpoints, tmp_path):
    report = run_victor_free(checkpoints, tmp_path)
    assert report["victor_modules"] == []
    for i, path in enumerate(checkpoints):
        res = report[str(path)]
        assert res["config"].startswith("transformers_modules.") and res["model"].startswith("transformers_modules.")
        assert res["processor"] == "LlavaProcessor" and res["automodel"] == "VictorLlavaForConditionalGeneration"
        assert torch.allclose(torch.tensor(res["norms"]), torch.ones(3, 5), atol=1e-5)  # the projector normalises
        logits, answers = victor_reference(path)
        for ours, theirs in zip(logits, report["logits"][i]):
            assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5, rtol=0)
        assert res["greedy"] == answers and res["pipeline"] == answers and all(answers), answers
        assert res["lmms_eval"] == victor_reference(path, dtype=torch.bfloat16)[1]
        assert REMOTE_FILES <= set(res["resaved"]) and "AutoModel" in res["resaved_auto_map"]
    assert report["processor_without_flag"] == "LlavaProcessor"
    refusals = report["refusals"]
    for loader in ("AutoConfig", "AutoModelForImageTextToText", "pipeline"):
        assert refusals[loader] and "trust_remote_code=True" in refusals[loader], refusals
    assert refusals["LlavaForConditionalGeneration"].startswith("KeyError") and "gelu+l2norm" in refusals[
        "LlavaForConditionalGeneration"]


def test_with_victor_imported_the_flag_changes_nothing(checkpoints):
    from transformers import AutoModel, AutoModelForImageTextToText

    from victor.model.normalized import VictorLlavaForConditionalGeneration

    for auto in (AutoModel, AutoModelForImageTextToText):
        for flag in (None, True):
            assert type(auto.from_pretrained(checkpoints[0], trust_remote_code=flag)) is \
                VictorLlavaForConditionalGeneration


def test_vllm_plugin_is_declared_and_imports_without_vllm(monkeypatch):
    section = re.search(r'^\[project\.entry-points\."vllm\.general_plugins"\]\n((?:[^\[\n].*\n)*)',
                        (REPO / "pyproject.toml").read_text(), re.M)
    module_name, func_name = re.search(r'^victor = "(.+)"$', section.group(1), re.M).group(1).split(":")
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    plugin = importlib.import_module(module_name)
    assert "vllm" not in sys.modules  # vllm is imported only when vLLM calls the plugin
    registered = {}
    registry = types.SimpleNamespace(get_supported_archs=lambda: list(registered),
                                     register_model=lambda arch, cls: registered.setdefault(arch, cls))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(ModelRegistry=registry))
    getattr(plugin, func_name)()
    getattr(plugin, func_name)()  # vLLM loads plugins once per process it starts: idempotent
    module, cls = registered["VictorLlavaForConditionalGeneration"].split(":")
    assert cls == "VictorLlavaForConditionalGeneration" and importlib.util.find_spec(module) is not None
