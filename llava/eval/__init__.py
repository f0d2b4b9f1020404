"""lmms-eval integration: one plugin model per model family (``FamilyAdapter.plugin_model``,
e.g. ``llava_onevision_aim``; ``python -c "import llava.eval.registry as r; print(r.MODELS)"``
lists them).

Import-light on purpose (lmms-eval imports the entry point module, :mod:`llava.eval.registry`,
at start-up); the model classes, derived from the family adapters, are in
:mod:`llava.eval.lmms_model`, the model_args parsing in :mod:`llava.eval.args`.
"""
