"""lmms-eval integration: plugin models ``llava_onevision_aim`` (LLaVA-OneVision), ``llava_aim``
(LLaVA-1.5), ``qwen2_vl_aim`` (Qwen2-VL) and ``qwen2_5_vl_aim`` (Qwen2.5-VL).

Import-light on purpose (lmms-eval imports the entry point module, :mod:`llava.eval.registry`,
at start-up); the model classes are in :mod:`llava.eval.lmms_model` (LLaVA) and
:mod:`llava.eval.qwen_vl` (Qwen-VL), the model_args parsing in :mod:`llava.eval.args`.
"""
