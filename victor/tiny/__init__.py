"""The embedded default: a procedural image world and tiny backbones, so the whole pipeline
runs on a laptop CPU in minutes. Secondary to the method's path: nothing under `model/`,
`data/`, `train/` or `eval/` imports it.

    scenes.py     vocabulary, scene sampling and rendering
    texts.py      captions, questions and conversations about a scene
    world.py      the world's files (LLaVA JSON, MMBench/POPE/GQA layouts) and its tokenizer
    backbones.py  tiny vision encoder + causal LM saved as Hugging Face directories
    pretrain.py   how the tiny backbones learn their world (as real ones arrive pretrained)
    prepare.py    all of the above in one call, rebuilt only when its inputs change
"""
