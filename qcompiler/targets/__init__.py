"""Export targets: a plan written as the settings another engine already reads.

- vllm-omni 0.30 (`qcompiler/export_vllm.py`, moving to `targets/vllm_omni.py`): `diffusion_kv_cache_*` settings;
- MindIE-SD 3.1.0 (`targets/mindiesd.py`): `OnlineQuantConfig` + `TimestepPolicyConfig`;
- xDiT / xfuser 0.7.0 (`targets/xdit.py`): `--hybrid_attn_schedule`.

`targets/cells.py` holds what they share: cells, routings, the dtype refusal and the error that names cells.
Pure data: nothing here imports torch.
"""
