"""The runtime side of the SageAttention formats (qcompiler/formats/sage1_int8_fp16pv.py,
sage2_int8_fp8pv_sm90.py): their whole-attention CPU references, registered with `register_quantizer`, on the
exact references of runtime/quant/sage.py, called as the sage backends call the library (runtime/backends/sage_cuda.py),
so `reference`, `report`, `calibrate` and `suggest` predict on CPU what the kernels compute.

Both formats quantize inside the kernel (P too), so they register an `attention_reference` only. Neither rotates Q/K
(the library does none): the formats fix hadamard_rotation to false, and a rotation reaching here is refused.
"""

from __future__ import annotations

import torch

from qcompiler.formats.base import Numerics
from qcompiler.formats.sage1_int8_fp16pv import NAME as SAGE1_DTYPE
from qcompiler.formats.sage2_int8_fp8pv_sm90 import NAME as SM90_DTYPE
from runtime.quant import register_quantizer
from runtime.quant.sage import SageReferenceError, sage1_sageattn, sage2_qk_int8_pv_fp8_cuda_sm90

# What the backends pass besides q, k, v (BSND = the library's "NHD"); the rest is the library's default, as
# diffusers leaves it. sm_scale is the default 1/sqrt(D): the dispatch sends other scales to the stock path.
TENSOR_LAYOUT = "NHD"
SM90_QK_QUANT_GRAN = "per_thread"
SM90_PV_ACCUM_DTYPE = "fp32+fp32"
# sageattn_qk_int8_pv_fp8_cuda_sm90 takes fp16/bf16 only ([v2] core.py:914); an fp32 model's call is run in bf16
# by the backend and by this reference alike, and the output cast back.
SM90_INPUT_DTYPES = (torch.float16, torch.bfloat16)


def sm90_input_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sage-sm90 backend hands the kernel for a model running in `dtype`."""
    return dtype if dtype in SM90_INPUT_DTYPES else torch.bfloat16


def _refuse_rotation(rotation: torch.Tensor | None, numerics: Numerics) -> None:
    if rotation is not None:
        raise SageReferenceError(f"{numerics.dtype} has no Q/K rotation (SageAttention rotates nothing); the plan "
                                 "asks for one: recompile with `hadamard_rotation: false`")


def sage1_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              rotation: torch.Tensor | None, numerics: Numerics) -> torch.Tensor:
    """`sageattn(q, k, v, tensor_layout="NHD", smooth_k=...)` of sageattention 1.0.6 on BSND: BSND in query's dtype.
    P.V modelled with the GPU's 16-deep fp16 MMA accumulation (sage.py, `pv_fp16_chunk`)."""
    _refuse_rotation(rotation, numerics)
    return sage1_sageattn(query, key, value, tensor_layout=TENSOR_LAYOUT, smooth_k=numerics.k_mean_subtraction)


def sm90_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             rotation: torch.Tensor | None, numerics: Numerics) -> torch.Tensor:
    """`sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="NHD", smooth_k=...)` on BSND (fp32 run in bf16,
    as the backend does): BSND in query's dtype."""
    _refuse_rotation(rotation, numerics)
    dtype = sm90_input_dtype(query.dtype)
    out = sage2_qk_int8_pv_fp8_cuda_sm90(
        query.to(dtype), key.to(dtype), value.to(dtype), tensor_layout=TENSOR_LAYOUT,
        qk_quant_gran=SM90_QK_QUANT_GRAN, pv_accum_dtype=SM90_PV_ACCUM_DTYPE, smooth_k=numerics.k_mean_subtraction,
    )
    return out.to(query.dtype)


register_quantizer(SAGE1_DTYPE, attention_reference=sage1_attention_reference)
register_quantizer(SM90_DTYPE, attention_reference=sm90_attention_reference)
