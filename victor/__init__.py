"""victor: LLaVA-family training with the ViCToR / Croc visual comprehension stage."""
from victor.model.normalized import register as _register

_register()
__version__ = "0.1.0"
