"""Triton attention kernels (set TRITON_INTERPRET=1 before import to run them on a CPU, slowly)."""

from .attention import attention_flops, flash_attention, flash_attention_qkvpacked, reference_attention

__all__ = ["attention_flops", "flash_attention", "flash_attention_qkvpacked", "reference_attention"]
