"""The code every `victor_llava` checkpoint carries beside its weights.

`configuration_victor_llava.py` and `modeling_victor_llava.py` import only torch and
transformers (never victor): `save_pretrained` copies them into the checkpoint and writes an
`auto_map` to `config.json` (the classes are registered with `register_for_auto_class`), so
the checkpoint loads with `trust_remote_code=True` where victor is not installed.
"""
