"""lmms-eval integration: plugin models ``llava_onevision_aim`` and ``llava_aim``.

Import-light on purpose (lmms-eval imports the entry point module at start-up); the model
classes are in :mod:`llava.eval.lmms_model`, the model_args parsing in :mod:`llava.eval.args`.
"""
